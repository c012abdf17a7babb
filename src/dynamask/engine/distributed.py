"""Small helpers for multi-process (DistributedDataParallel) training.

A run started by ``torchrun --nproc_per_node=N -m dynamask train ...`` has the
environment variables ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set (plus
``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` reads them and
initialises the default process group (NCCL on CUDA, Gloo on CPU). Without
them everything here degrades to single-process behaviour: rank 0 of 1,
barriers and reductions are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "env_world_size",
    "env_rank",
    "env_local_rank",
    "launched_distributed",
    "init_distributed",
    "cleanup_distributed",
    "is_dist",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "all_gather_object",
    "gather_object",
    "broadcast_object",
    "agree_on_failure",
    "settle_on_rank0_status",
    "shard_positions",
    "process_device",
    "reduce_dict",
    "resolve_training_device",
    "peer_failure_guard",
]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return _env_int("WORLD_SIZE", 1)


def env_rank() -> int:
    """``RANK`` from the environment (0 when unset)."""
    return _env_int("RANK", 0)


def env_local_rank() -> int:
    """``LOCAL_RANK`` from the environment (0 when unset)."""
    return _env_int("LOCAL_RANK", 0)


def launched_distributed() -> bool:
    """True when started by torchrun (or similar) with more than one process."""
    return env_world_size() > 1


def init_distributed(backend: str | None = None, device: str | None = None, timeout: timedelta | None = None) -> bool:
    """Initialise the default process group from torchrun's environment variables.

    Does nothing (returns False) when the process group already exists or the
    environment does not describe a multi-process run. ``backend`` defaults to
    ``nccl`` when ``device`` (default: CUDA if available) is a CUDA device and
    ``gloo`` otherwise. On CUDA the current device is set to ``LOCAL_RANK``.
    Returns True when this call created the process group (the caller should
    then call :func:`cleanup_distributed` when done).
    """
    if not dist.is_available() or dist.is_initialized() or not launched_distributed():
        return False
    use_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(env_local_rank())
    kwargs = {"timeout": timeout} if timeout is not None else {}
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return True


def cleanup_distributed() -> None:
    """Destroy the default process group if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    return env_local_rank() if is_dist() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _comm_device() -> torch.device:
    """Device for collective tensors: the current CUDA device under NCCL, else CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of floats over all processes (identity when single-process)."""
    if not is_dist():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def all_gather_object(obj: Any) -> list[Any]:
    """List of ``obj`` from every rank (``[obj]`` when single-process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """List of ``obj`` from every rank on rank ``dst``, None on the others (``[obj]`` when
    single-process). Only ``dst`` holds everyone's objects (all_gather_object would hold them on
    every rank)."""
    if not is_dist():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _failure_text(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def agree_on_failure(exc: BaseException | None, what: str) -> None:
    """Collective: every process passes the exception its part of a sharded job raised (or None).
    When any process had one, every process raises -- its own exception, or a
    :class:`~dynamask.errors.DynaMaskError` naming the first rank that failed and why -- so that
    none is left waiting in the next collective. Single-process: raises ``exc`` when given."""
    from ..errors import DynaMaskError

    if not is_dist():
        if exc is not None:
            raise exc
        return
    texts = all_gather_object(None if exc is None else _failure_text(exc)[:500])
    if exc is not None:
        raise exc
    failed = [(r, t) for r, t in enumerate(texts) if t is not None]
    if failed:
        rank, text = failed[0]
        raise DynaMaskError(f"{what}: rank {rank} of {len(texts)} failed ({text})")


def settle_on_rank0_status(status: tuple, failure: BaseException | None, what: str) -> tuple:
    """Collective: rank 0's ``status`` — ``("ok", ...)`` or ``("failed", rank, text)`` — on every
    process, each of which raises when it says failed: its own exception (``failure``) when it has
    one, else a :class:`~dynamask.errors.DynaMaskError` naming the rank that failed."""
    from ..errors import DynaMaskError

    status = broadcast_object(status)
    if status[0] != "ok":
        if failure is not None:
            raise failure
        raise DynaMaskError(f"{what}: rank {status[1]} of {get_world_size()} failed ({str(status[2])[:500]})")
    return status


def shard_positions(n: int, rank: int, world: int, block: int = 1) -> list[int]:
    """The positions ``0..n-1`` that process ``rank`` of ``world`` takes: blocks of ``block``
    consecutive positions dealt out in turn (block k to rank k mod world). With ``block`` the
    batch size, every batch holds the images it holds in a single-process run."""
    block = max(1, int(block))
    return [p for k in range(rank, (n + block - 1) // block, world) for p in range(k * block, min(n, (k + 1) * block))]


def process_device(device: torch.device | None) -> torch.device | None:
    """A CUDA device without an index is this process's own, ``cuda:LOCAL_RANK``, inside a
    multi-process group; anything else is returned as given."""
    if device is not None and device.type == "cuda" and device.index is None and is_dist():
        return torch.device("cuda", env_local_rank())
    return device


def reduce_dict(values: Mapping[str, float], average: bool = True) -> dict[str, float]:
    """Reduce a dict of numbers (or 0-d tensors) over all processes.

    Keys may differ between ranks (e.g. a loss term that only some steps
    produce): the result holds the union of the keys, each averaged over the
    ranks that have it (``average=True``) or summed. Every rank gets the result.
    """
    local = {str(k): float(v.detach().item() if isinstance(v, torch.Tensor) else v) for k, v in values.items()}
    if not is_dist():
        return dict(local)
    keys = sorted(set().union(*all_gather_object(sorted(local))))
    sums = all_reduce_sum([local.get(k, 0.0) for k in keys] + [1.0 if k in local else 0.0 for k in keys])
    n = len(keys)
    out = {}
    for i, k in enumerate(keys):
        total, count = sums[i], sums[n + i]
        out[k] = total / count if (average and count > 0) else total
    return out


def resolve_training_device(device: str | None, distributed: bool) -> torch.device:
    """The device of this training process: ``cuda:LOCAL_RANK`` under torchrun with CUDA."""
    from ..errors import DynaMaskError

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DynaMaskError(f"--device: unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DynaMaskError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if distributed:
            dev = torch.device("cuda", env_local_rank())
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise DynaMaskError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) available")
    elif dev.type != "cpu":
        raise DynaMaskError(f"--device: unsupported device type {dev.type!r} (use cpu, cuda or cuda:N)")
    return dev


#: how a collective fails when a peer died (socket closed) or hangs (timeout), in Gloo and NCCL
_PEER_FAILURE = re.compile(r"gloo|nccl|connection|peer|timed? ?out|socket|broken pipe|process group", re.I)


@contextlib.contextmanager
def peer_failure_guard(iteration: Callable[[], int], checkpoint: str) -> Iterator[None]:
    """Turn a collective that failed because another process died or hangs into one clear error
    naming the iteration and the last complete checkpoint (only rank 0 writes, atomically, so it
    is intact), instead of a traceback from deep inside DDP. Single-process runs are untouched."""
    from ..errors import DynaMaskError

    try:
        yield
    except RuntimeError as exc:
        distributed_error = isinstance(exc, getattr(dist, "DistError", ())) or _PEER_FAILURE.search(str(exc))
        if not (is_dist() and distributed_error):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DynaMaskError(
            f"rank {get_rank()}: a collective operation failed after iteration {iteration()} ({first[:200]}); "
            f"another training process has probably died or stopped responding. The last complete checkpoint is "
            f"{checkpoint} (if it exists): resume with --resume under the same launch"
        ) from None
