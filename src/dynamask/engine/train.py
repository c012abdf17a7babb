"""Training: build a run, then step it; single process or DistributedDataParallel.

:func:`train` is what ``dynamask train`` runs. It reads as three parts:

* :func:`build_run` (``training_run``) -- checks, data, model, optimiser, resume state, data
  loader (nothing is trained, nothing but the output folder's write test is written);
* :func:`train_step` (``training_step``) -- one optimisation step: forward, agree on
  skipping/stopping, backward, clip, update, LR schedule;
* :func:`run_training` (``training_loop``) -- the loop: a step, then the hooks in order (metrics,
  checkpoint, evaluation), then the stop check; and the end of training.

Their names are importable from here as well.

The parts it calls each live in a module named for what they do: ``data_stream`` (restartable
sharded batches), ``optim`` (optimiser, LR schedule), ``checkpointing`` (writing and resuming),
``initialise`` (starting weights), ``metrics`` (metrics.jsonl, TensorBoard, log lines),
``periodic_eval``, ``signals`` (SIGINT/SIGTERM), ``nonfinite`` (NaN steps), ``distributed``.

Everything a run writes goes to the output directory (``out_dir``, else ``cfg["output_dir"]``):
``config.yaml`` (the resolved config); ``metrics.jsonl`` (every ``solver.log_period`` steps the
losses averaged over the period and over processes, ``total_loss``, ``lr``, ``grad_norm``,
``time_per_iter``, ``data_time``, ``images_per_s``; events ``nonfinite_loss``, ``skipped_image``,
``eval``, ``eval_failed``, ``final``); ``tb/`` (TensorBoard); ``checkpoint_last.pt`` (every
``solver.checkpoint_period`` steps, at the end, and when interrupted or aborted);
``model_final.pt`` (the file ``evaluate``/``predict`` take).

Multi-process: under ``torchrun --nproc_per_node=N -m dynamask train ...`` the process group comes
from the environment (NCCL on CUDA, Gloo on CPU; collectives time out after
``solver.dist_timeout_s``), the model is wrapped in DDP with ``find_unused_parameters=True`` (the
DynaMask head does not use every branch in every step), each process reads its own shard and
``solver.ims_per_batch`` is the global batch. Only rank 0 writes. Skipping a non-finite step and
stopping on a signal are decided by one all-reduced flag, so every process stops at the same step
and the checkpoint written there is complete. When a process dies, the others stop with an error
naming the last complete checkpoint instead of waiting forever.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from ..config import ConfigError, flatten, load_config
from . import distributed as du
from .checkpointing import CHECKPOINT_LAST, MODEL_FINAL, weights_hash
from .data_stream import InfiniteShardSampler, SeededDataset
from .nonfinite import NonFiniteLossError
from .optim import make_lr_lambda
from .rng import get_rng_state, sample_seed, seed_everything, set_rng_state
from .signals import TrainingInterrupted
from .training_loop import METRICS_FILE, run_training
from .training_run import TrainingRun, build_run
from .training_step import StepResult, train_step

__all__ = [
    "train",
    "build_run",
    "train_step",
    "run_training",
    "TrainingRun",
    "StepResult",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "InfiniteShardSampler",
    "SeededDataset",
    "make_lr_lambda",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "sample_seed",
    "weights_hash",
    "CHECKPOINT_LAST",
    "MODEL_FINAL",
    "METRICS_FILE",
]


def train(
    cfg: dict, out_dir: str | None = None, resume: bool = False, progress: bool = True, device: str | None = None
) -> dict:
    """Train a model as described by ``cfg``; returns a summary dict.

    Args:
        cfg: config dict (see :data:`dynamask.config.DEFAULTS`; missing keys take defaults).
        out_dir: output directory (default ``cfg["output_dir"]``).
        resume: continue from ``out_dir/checkpoint_last.pt`` (error if there is none).
        progress: show a tqdm progress bar (only on a terminal, and only on rank 0).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (default: CUDA if available). Under torchrun
            each process uses ``cuda:LOCAL_RANK``.

    Returns a dict with ``iteration``, ``output_dir``, ``checkpoint``, ``model_final``,
    ``losses`` (the last logged averages), ``total_loss``, ``lr``, ``nonfinite_steps``,
    ``skipped_images`` (over all processes), ``time_s``, ``world_size``, ``weights_sha256``
    (one per process) and ``eval`` (metrics of the final evaluation, or None).

    Raises :class:`DynaMaskError` for user errors (bad config, unwritable output directory,
    missing data, nothing to resume, a dead peer process), :class:`NonFiniteLossError` after
    ``solver.max_nonfinite_steps`` consecutive non-finite losses and :class:`TrainingInterrupted`
    after SIGINT/SIGTERM (both write ``checkpoint_last.pt`` first).
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"train: cfg must be a dict, got {type(cfg).__name__}")
    cfg = load_config(None, flatten(cfg))  # a full, validated copy (missing keys take their defaults)
    out_dir = os.path.abspath(os.path.expanduser(out_dir if out_dir is not None else cfg["output_dir"]))
    cfg["output_dir"] = out_dir

    distributed_env = du.launched_distributed()
    dev = du.resolve_training_device(device, distributed_env)
    timeout = timedelta(seconds=cfg["solver"]["dist_timeout_s"])
    created_pg = du.init_distributed(device=str(dev), timeout=timeout) if distributed_env else False
    try:
        t_start = time.perf_counter()
        run = build_run(cfg, out_dir, resume, dev)
        return run_training(run, progress, t_start)
    finally:
        if created_pg:
            du.cleanup_distributed()
