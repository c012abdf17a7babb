"""What the tests that start ``torchrun`` share: a clean environment and the launcher's command.

A worker must not inherit a surrounding launch's rank variables, runs one OpenMP thread (the CPU
has two cores for two workers) and writes its output unbuffered, so that a killed run's log is
complete.
"""

from __future__ import annotations

import os
import sys

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: ``python -m torch.distributed.run``: torchrun with this interpreter
TORCHRUN = (sys.executable, "-m", "torch.distributed.run")


def torchrun_env() -> dict[str, str]:
    """This process's environment for a torchrun launcher, without any launch's variables."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in _LAUNCH_VARIABLES:
        env.pop(name, None)
    return env
