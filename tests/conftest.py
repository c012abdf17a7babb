import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The machine is shared: one intra-op thread (also much faster than 2 busy ones).
    Modules that train opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
