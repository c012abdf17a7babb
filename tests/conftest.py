import logging
import os

import pytest
import torch

# Under pytest-xdist (tools/test.sh runs ``-n auto``) every worker is one process per CPU: one
# intra-op thread each, for torch here and for the processes the tests start (CLI runs, torchrun),
# so that the workers do not oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# The longest modules first, so that with several workers (tools/test.sh: ``--dist loadfile``) they
# start at once and the short ones fill in around them; serial runs only see another order of
# modules (the order inside a module is kept). CPU seconds per module, 2-core AMD EPYC VM, 2026-12-06
# (test_gpu_check.py: 2026-12-07, after its --quick models were made narrow):
RUN_FIRST = (
    "test_gpu_check.py",  # 84 (was 224): bf16 training steps (generic kernels on CPUs without native bf16)
    "test_ddp_faults.py",  # 78: four torchrun launches
    "test_sharded_eval.py",  # 50 (2026-12-07): two 2-process torchrun launches on the shipped 256-px model
    "test_multinode.py",  # 48 (2026-12-07): two launches of two one-process "nodes" (c10d rendezvous)
    "test_export.py",  # 46
    "test_overfit.py",  # 35
    "test_app_browser.py",  # 35 (2026-12-07): the app's server and headless Chromium
    "test_train.py",  # 29
    "test_app.py",  # 26 (2026-12-07): the shipped head in the app's viewer, a TorchScript export
    "test_torchvision_weights.py",  # 27
    "test_train_step.py",  # 27
    "test_model.py",  # 25
    "test_reliability.py",  # 19
    "test_reference_run.py",  # 17
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return RUN_FIRST.index(name) if name in RUN_FIRST else len(RUN_FIRST)

    items.sort(key=rank)  # stable: the order inside each module and among the rest is kept


@pytest.fixture
def restore_logging():
    """main() configures the 'dynamask' logger; put it back for the other test files."""
    log = logging.getLogger("dynamask")
    saved = (list(log.handlers), log.level, log.propagate)
    yield
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


@pytest.fixture(scope="module")
def one_thread():
    """The machine is shared: one intra-op thread (also much faster than 2 busy ones).
    Modules that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``;
    so do the ``recorded`` tests whose reference was recorded with one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
