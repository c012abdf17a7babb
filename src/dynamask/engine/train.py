"""Training: build a run, then step it; single process or DistributedDataParallel.

:func:`train` is what ``dynamask train`` runs. It reads as three parts:

* :func:`build_run` -- checks, data, model, optimiser, resume state, data loader (nothing is
  trained, nothing but the output folder's write test is written);
* :func:`train_step` -- one optimisation step: forward, agree on skipping/stopping, backward,
  clip, update, LR schedule;
* :func:`run_training` -- the loop: a step, then the hooks in order (metrics, checkpoint,
  evaluation), then the stop check; and the end of training.

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

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from ..config import ConfigError, effective_lr, flatten, load_config, save_config
from ..errors import DynaMaskError
from . import distributed as du
from .build import build_model, fits_coco_label_space, torchvision_weights_plan
from .checkpointing import (
    CHECKPOINT_LAST,
    MODEL_FINAL,
    Checkpointer,
    check_free_space,
    check_writable,
    config_differences,
    load_resume_checkpoint,
    restore_training_state,
    weights_hash,
)
from .data_stream import InfiniteShardSampler, SeededDataset, SkippedImages, build_loader, load_train_dataset, to_device
from .initialise import initialise_weights
from .metrics import MetricsFile, MetricsLogger, fmt_duration, fmt_lr, open_tensorboard
from .nonfinite import NonFiniteGuard, NonFiniteLossError
from .optim import build_optimizer, build_scheduler, make_lr_lambda
from .periodic_eval import PeriodicEvaluator
from .rng import get_rng_state, sample_seed, seed_everything, set_rng_state
from .signals import StopFlag, TrainingInterrupted

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

logger = logging.getLogger("dynamask.train")

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class TrainingRun:
    """Everything one process needs to train, built by :func:`build_run` before the first step."""

    cfg: dict
    out_dir: str
    device: torch.device
    rank: int
    world: int
    per_rank_batch: int
    amp: str
    dataset: Any
    model: torch.nn.Module
    train_model: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    loader: Any
    shard_size: int
    start_iter: int
    resumed: bool
    params: list = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def class_info(self) -> dict[str, Any]:
        return {
            "class_names": list(self.dataset.class_names),
            "cat_ids": [int(c) for c in self.dataset.cat_ids],
            "num_classes": len(self.dataset.class_names) + 1,
        }


@dataclass
class StepResult:
    """What one step did: this process's loss values, and the decisions all processes agreed on."""

    losses: dict[str, float]
    total: float
    grad_norm: float
    finite: bool  # the update was applied
    backward_done: bool
    stop_now: bool
    lr: float  # the LR this step used


# ---------------------------------------------------------------------------------------- entry


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


# ---------------------------------------------------------------------------------------- building


def build_run(cfg: dict, out_dir: str, resume: bool, dev: torch.device) -> TrainingRun:
    """Check the config and output folder, then build data, model, optimiser and loader, restoring
    a resumable checkpoint when ``resume``. Errors come before anything is written."""
    rank, world = du.get_rank(), du.get_world_size()
    s = cfg["solver"]
    if s["ims_per_batch"] % world:
        raise ConfigError(
            f"solver.ims_per_batch ({s['ims_per_batch']}) is the global batch and must be "
            f"divisible by the number of processes ({world})"
        )
    for key in ("train_json", "train_images"):
        if not cfg["data"].get(key):
            raise ConfigError(
                f"config: 'data.{key}' is not set; training needs it (set it in the YAML file or pass data.{key}=PATH)"
            )
    check_writable(out_dir)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_LAST)
    ckpt = load_resume_checkpoint(ckpt_path) if resume else None
    if ckpt is None and rank == 0 and os.path.exists(ckpt_path):
        logger.warning("%s exists and will be overwritten (use --resume to continue that run)", ckpt_path)
    amp = s["amp"]
    if amp != "none" and dev.type != "cuda":
        if rank == 0:
            logger.warning("solver.amp=%s is ignored on %s (mixed precision is used on CUDA only)", amp, dev.type)
        amp = "none"

    seed_everything(cfg["seed"])
    tv_plan = torchvision_weights_plan(cfg)
    dataset = _training_dataset(cfg, tv_plan, ckpt, ckpt_path, rank == 0)
    n_classes = len(dataset.class_names)
    model = _training_model(cfg, n_classes, tv_plan, rank == 0)
    model.to(dev)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    if rank == 0:
        check_free_space(out_dir, model, optimizer)

    per_rank_batch = s["ims_per_batch"] // world
    start_iter, data_epoch, data_pos = 0, 0, 0
    seed_everything(cfg["seed"] + rank)  # per-process stream for the model's own randomness
    if ckpt is None:
        initialise_weights(model, cfg, tv_plan, n_classes + 1)
    else:
        start_iter, data_epoch, data_pos = restore_training_state(
            ckpt,
            ckpt_path,
            cfg,
            n_classes + 1,
            model,
            optimizer,
            scheduler,
            scaler,
            rank,
            world,
            per_rank_batch,
            len(dataset),
        )
        del ckpt

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
        )
    loader, shard_size = build_loader(cfg, dataset, per_rank_batch, rank, world, data_epoch, data_pos, dev)
    return TrainingRun(
        cfg=cfg,
        out_dir=out_dir,
        device=dev,
        rank=rank,
        world=world,
        per_rank_batch=per_rank_batch,
        amp=amp,
        dataset=dataset,
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        loader=loader,
        shard_size=shard_size,
        start_iter=start_iter,
        resumed=resume,
        params=[p for p in model.parameters() if p.requires_grad],
    )


def _training_dataset(cfg: dict, tv_plan: dict | None, ckpt: dict | None, ckpt_path: str, main: bool):
    """The training set, in torchvision's COCO label space when a 91-class torchvision file starts
    the run on COCO categories; its classes checked against the config and a resumed checkpoint."""
    dataset = load_train_dataset(cfg)
    if tv_plan and tv_plan["num_classes"] == 91 and fits_coco_label_space(dataset.cat_ids, dataset.class_names):
        from ..models.torchvision_weights import coco_label_space

        dataset.use_categories(coco_label_space())
        if main:
            logger.info(
                "model.%s: %s is torchvision's 91-class COCO model and the data's categories are COCO's: "
                "labels keep torchvision's label space (label = COCO category id)",
                tv_plan["key"],
                tv_plan["path"],
            )
    n_classes = len(dataset.class_names)
    if cfg["model"]["num_classes"] is not None and cfg["model"]["num_classes"] != n_classes:
        raise ConfigError(
            f"model.num_classes is {cfg['model']['num_classes']} but the training set "
            f"{cfg['data']['train_json']} has {n_classes} categories"
        )
    if ckpt is not None:
        ck_classes = ckpt.get("class_names")
        if ck_classes is not None and list(ck_classes) != list(dataset.class_names):
            raise DynaMaskError(
                f"--resume: {ckpt_path} was trained on classes {list(ck_classes)}, but "
                f"{cfg['data']['train_json']} has {list(dataset.class_names)}"
            )
        if isinstance(ckpt.get("config"), dict) and main:
            diff = [k for k in config_differences(ckpt["config"], cfg) if k not in ("output_dir", "solver.max_iter")]
            if diff:
                logger.warning("--resume: the config differs from the checkpoint's in: %s", ", ".join(diff))
    return dataset


def _training_model(cfg: dict, n_classes: int, tv_plan: dict | None, main: bool) -> torch.nn.Module:
    """The model with ``model.freeze_detector`` applied (the box predictor trains when a
    torchvision file's classes are not the data's)."""
    model = build_model(cfg, n_classes + 1)
    if cfg["model"].get("freeze_detector"):
        model.freeze_detector()
        if tv_plan is not None and tv_plan["num_classes"] != n_classes + 1:
            for parameter in model.roi_heads.box_predictor.parameters():
                parameter.requires_grad_(True)
            if main:
                logger.info(
                    "model.freeze_detector: the box predictor trains (new classes); backbone, FPN, RPN and "
                    "box head stay frozen"
                )
    return model


# ---------------------------------------------------------------------------------------- the step


def train_step(run: TrainingRun, images, targets, autocast, stop: StopFlag) -> StepResult:
    """One step. Every process takes the same decisions: a non-finite loss anywhere skips the
    update everywhere, a signal anywhere stops everyone after this step."""
    with autocast():
        loss_dict = run.train_model(images, targets)
    loss_dict = {k: v.float() for k, v in loss_dict.items()}
    total = sum(loss_dict.values()) if loss_dict else torch.zeros((), device=run.device)
    finite = bool(torch.isfinite(total).item())
    if run.world > 1:  # one all-reduced flag: agree on skipping and stopping
        bad_ranks, stop_ranks = du.all_reduce_sum([0.0 if finite else 1.0, 1.0 if stop.requested else 0.0])
        finite, stop_now = bad_ranks == 0, stop_ranks > 0
    else:
        stop_now = stop.requested

    grad_norm = float("nan")
    backward_done = finite
    optimizer, scaler = run.optimizer, run.scaler
    if finite:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        clip = run.cfg["solver"]["clip_grad_norm"]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, max_norm=clip if clip else float("inf")))
        if scaler is not None:
            scaler.step(optimizer)  # skips the update itself on inf/nan gradients
            scaler.update()
        elif math.isfinite(grad_norm):
            optimizer.step()
        else:
            finite = False  # finite loss but non-finite gradients: skip the step as well
        optimizer.zero_grad(set_to_none=True)
    lr = optimizer.param_groups[0]["lr"]
    with warnings.catch_warnings():
        # skipped steps still advance the schedule (LR is a function of the iteration)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        run.scheduler.step()
    return StepResult(
        losses={k: float(v.detach().item()) for k, v in loss_dict.items()},
        total=float(total.detach().item()),
        grad_norm=grad_norm,
        finite=finite,
        backward_done=backward_done,
        stop_now=stop_now,
        lr=lr,
    )


def _autocast(run: TrainingRun):
    if run.amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if run.amp == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


# ---------------------------------------------------------------------------------------- the loop


def run_training(run: TrainingRun, progress: bool = True, t_start: float | None = None) -> dict:
    """Train ``run`` to ``solver.max_iter``; returns the summary :func:`train` describes."""
    import tqdm as _tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    t_start = time.perf_counter() if t_start is None else t_start
    cfg, out_dir, main = run.cfg, run.out_dir, run.main
    metrics = MetricsFile(os.path.join(out_dir, METRICS_FILE), enabled=main)
    writer = None
    if main:
        save_config(cfg, os.path.join(out_dir, CONFIG_FILE))
        if run.resumed:
            metrics.truncate_after(run.start_iter)  # the steps after the checkpoint are redone: logged once
        else:
            metrics.reset()
        writer = open_tensorboard(os.path.join(out_dir, "tb"), purge_step=run.start_iter if run.resumed else None)
    show_bar = bool(progress and main and sys.stderr.isatty())
    checkpointer = Checkpointer(
        out_dir,
        cfg,
        run.model,
        run.optimizer,
        run.scheduler,
        run.scaler,
        run.class_info,
        run.per_rank_batch,
        run.shard_size,
        run.world,
        main,
    )
    logger_hook = MetricsLogger(metrics, writer, cfg, run.per_rank_batch, run.shard_size, run.world, main, show_bar)
    evaluator = PeriodicEvaluator(cfg, run.model, out_dir, run.device, run.class_info["cat_ids"], metrics, writer, main)
    guard = NonFiniteGuard(cfg["solver"]["max_nonfinite_steps"], metrics.write, main, checkpointer.last_path)
    skipped = SkippedImages(metrics.write, main)
    max_iter = cfg["solver"]["max_iter"]
    if main:
        logger.info(
            "training %s (%s head, %s policy) on %d image(s), %d classes: iterations %d..%d, batch %d "
            "(%d process(es) x %d), lr %s, device %s",
            cfg["model"]["backbone"],
            cfg["model"]["head"],
            cfg["model"]["policy"],
            len(run.dataset),
            len(run.dataset.class_names),
            run.start_iter + 1,
            max_iter,
            cfg["solver"]["ims_per_batch"],
            run.world,
            run.per_rank_batch,
            fmt_lr(effective_lr(cfg)),
            run.device,
        )
    bar = _tqdm.tqdm(
        total=max_iter,
        initial=run.start_iter,
        disable=not show_bar,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    redirect = logging_redirect_tqdm(loggers=[logging.getLogger("dynamask")]) if show_bar else contextlib.nullcontext()
    iteration = run.start_iter
    try:
        with StopFlag() as stop, redirect, du.peer_failure_guard(lambda: iteration, checkpointer.last_path):
            data_iter = iter(run.loader)
            autocast = _autocast(run)
            t_iter = time.perf_counter()
            for step in range(run.start_iter + 1, max_iter + 1):
                images, targets = next(data_iter)
                skipped.take(targets, step)
                t_data = time.perf_counter() - t_iter
                images, targets = to_device(images, targets, run.device)
                result = train_step(run, images, targets, autocast, stop)
                iteration = step
                logger_hook.window.add(result, time.perf_counter() - t_iter, t_data)
                error = guard.check(step, result)
                if error is not None:
                    checkpointer.save_last(step)
                    raise error
                if show_bar:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {result.total:.4f} lr {fmt_lr(result.lr)}", refresh=False)
                logger_hook.after_step(step, result.lr)
                if (
                    cfg["solver"]["checkpoint_period"]
                    and step % cfg["solver"]["checkpoint_period"] == 0
                    and step != max_iter
                ):
                    checkpointer.save_last(step)
                evaluator.after_step(step)
                if result.stop_now:
                    _stop(checkpointer, step, stop.name, main)
                t_iter = time.perf_counter()
            del data_iter
            hashes, final_eval = _finish(run, checkpointer, evaluator, iteration)
            skipped_total = int(du.all_reduce_sum([skipped.count])[0])
    finally:
        bar.close()
        if writer is not None:
            writer.flush()
            writer.close()
    return _summary(
        run,
        metrics,
        logger_hook,
        checkpointer,
        iteration,
        guard.total,
        skipped_total,
        hashes,
        final_eval,
        time.perf_counter() - t_start,
    )


def _stop(checkpointer: Checkpointer, step: int, signal_name: str, main: bool) -> None:
    checkpointer.save_last(step)
    name = signal_name or "a signal on another process"
    if main:
        logger.warning("interrupted by %s at iteration %d; checkpoint written", name, step)
    raise TrainingInterrupted(
        f"interrupted ({name}) at iteration {step}; checkpoint written to "
        f"{checkpointer.last_path}, resume with --resume",
        iteration=step,
        checkpoint=checkpointer.last_path,
        signal_name=name,
    )


def _finish(run: TrainingRun, checkpointer: Checkpointer, evaluator: PeriodicEvaluator, iteration: int):
    """Last checkpoint, model_final.pt, the weight hashes of every process, the final evaluation."""
    if run.world > 1:
        # DDP broadcasts buffers (BatchNorm statistics) from rank 0 at the start of each forward, so
        # after the last forward they differ per process: take rank 0's, as the next forward would.
        with torch.no_grad():
            for buf in run.model.buffers():
                torch.distributed.broadcast(buf, src=0)
    checkpointer.save_last(iteration)
    checkpointer.save_final(iteration)
    hashes = du.all_gather_object(weights_hash(run.model)) if run.world > 1 else [weights_hash(run.model)]
    if len(set(hashes)) != 1 and run.main:
        logger.warning(
            "the weights differ between processes after training (sha256 per rank: %s); model_final.pt holds rank 0's",
            hashes,
        )
    final_eval = evaluator.run(iteration) if evaluator.enabled else None
    return hashes, final_eval


def _summary(
    run: TrainingRun,
    metrics: MetricsFile,
    logger_hook: MetricsLogger,
    checkpointer: Checkpointer,
    iteration: int,
    nonfinite_total: int,
    skipped_total: int,
    hashes,
    final_eval,
    elapsed: float,
) -> dict:
    last = logger_hook.last
    summary = {
        "iteration": iteration,
        "output_dir": run.out_dir,
        "checkpoint": checkpointer.last_path,
        "model_final": checkpointer.final_path,
        "losses": {k: v for k, v in last.items() if k.startswith("loss")},
        "total_loss": last.get("total_loss"),
        "lr": run.optimizer.param_groups[0]["lr"],
        "nonfinite_steps": nonfinite_total,
        "skipped_images": skipped_total,
        "time_s": elapsed,
        "world_size": run.world,
        "weights_sha256": hashes,
        "eval": final_eval,
    }
    metrics.write(
        {
            "iteration": iteration,
            "event": "final",
            "total_loss": summary["total_loss"],
            "nonfinite_steps": nonfinite_total,
            "time_s": elapsed,
            "world_size": run.world,
            "weights_sha256": hashes,
        }
    )
    if run.main:
        if skipped_total:
            logger.warning(
                "%d unreadable training image(s) were skipped over all %d process(es)", skipped_total, run.world
            )
        logger.info(
            "training finished: %d iterations in %s; model written to %s",
            iteration - run.start_iter,
            fmt_duration(elapsed),
            checkpointer.final_path,
        )
    return summary
