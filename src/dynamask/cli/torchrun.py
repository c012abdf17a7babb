"""What a command does differently under torchrun (WORLD_SIZE > 1): it joins the process group for
the run, and rank 0 alone prints the results."""

from __future__ import annotations

import contextlib
import os


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


def is_rank0() -> bool:
    """True outside torchrun, and in its rank-0 process: the one that prints."""
    return os.environ.get("RANK", "0").strip() in ("", "0")
