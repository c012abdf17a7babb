"""What a command does differently under torchrun (WORLD_SIZE > 1): it joins the process group for
the run, and rank 0 alone prints the results."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def process_group(device: str | None, cfg: dict | None):
    """Under torchrun (WORLD_SIZE > 1): this process's device (``cuda:LOCAL_RANK`` with CUDA) and
    the process group, destroyed at the end; otherwise ``device`` as given and nothing else.
    Collectives time out after ``solver.dist_timeout_s`` (rank 0 computes the metrics while the
    others wait)."""
    from ..engine import distributed as du

    if not du.launched_distributed():
        yield device
        return
    from datetime import timedelta

    from ..config import default_config

    dev = du.resolve_training_device(device, True)
    seconds = ((cfg or {}).get("solver") or {}).get("dist_timeout_s") or default_config()["solver"]["dist_timeout_s"]
    timeout = timedelta(seconds=float(seconds))
    created = du.init_distributed(device=str(dev), timeout=timeout)
    try:
        yield str(dev)
    finally:
        if created:
            du.cleanup_distributed()


def under_torchrun() -> bool:
    """True in a process torchrun started with others (``WORLD_SIZE`` set and not 1), read without
    importing torch (a value that is not a number never stops a command here)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")


def is_rank0() -> bool:
    """True outside torchrun, and in its rank-0 process: the one that prints."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


def leave_torchrun_worker(status: int) -> None:
    """Under torchrun, once the process group is gone: flush and leave with ``status`` now, without
    the interpreter's and C++'s exit-time teardown.

    A worker that has finished its command (outputs written, process group destroyed) sometimes
    aborted in that teardown — "terminate called without an active exception", SIGABRT, no Python
    frame left — after its peer had already exited (c10d/Gloo, measured in two-node
    ``dynamask evaluate``), and torchrun then reported a finished run as failed. Outside torchrun,
    or while a process group is still up, this does nothing.
    """
    if not under_torchrun():
        return
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
