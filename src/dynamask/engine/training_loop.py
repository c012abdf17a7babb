"""The training loop: :func:`run_training` steps a built :class:`~dynamask.engine.training_run.TrainingRun`
to ``solver.max_iter`` and ends it.

Each step is followed by its hooks in a fixed order -- metrics (``metrics.jsonl``, TensorBoard, the
log line), the non-finite guard, the periodic checkpoint, the periodic evaluation -- and then the
stop check, so a run interrupted at step N has logged, saved and evaluated exactly what an
uninterrupted one has at N. The end writes the last checkpoint and ``model_final.pt``, compares the
weights of all processes, runs the final evaluation and writes the ``final`` event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..config import effective_lr, save_config
from . import distributed as du
from .checkpointing import Checkpointer, weights_hash
from .data_stream import SkippedImages, to_device
from .metrics import MetricsFile, MetricsLogger, fmt_duration, fmt_lr, open_tensorboard
from .nonfinite import NonFiniteGuard
from .periodic_eval import PeriodicEvaluator
from .signals import StopFlag, TrainingInterrupted
from .training_run import TrainingRun
from .training_step import autocast_for, train_step

__all__ = ["run_training", "METRICS_FILE", "CONFIG_FILE"]

logger = logging.getLogger("dynamask.train")

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


@dataclass
class _Hooks:
    """What runs around the steps: the output files and the hooks that write to them."""

    metrics: MetricsFile
    writer: Any  # TensorBoard SummaryWriter on rank 0, else None
    checkpointer: Checkpointer
    logger: MetricsLogger
    evaluator: PeriodicEvaluator
    guard: NonFiniteGuard
    skipped: SkippedImages


def run_training(run: TrainingRun, progress: bool = True, t_start: float | None = None) -> dict:
    """Train ``run`` to ``solver.max_iter``; returns the summary :func:`~dynamask.engine.train.train`
    describes."""
    t_start = time.perf_counter() if t_start is None else t_start
    cfg, main = run.cfg, run.main
    show_bar = bool(progress and main and sys.stderr.isatty())
    hooks = _open_hooks(run, show_bar)
    max_iter = cfg["solver"]["max_iter"]
    if main:
        _log_start(run)
    bar, redirect = _progress_bar(run, show_bar)
    iteration = run.start_iter
    try:
        with StopFlag() as stop, redirect, du.peer_failure_guard(lambda: iteration, hooks.checkpointer.last_path):
            data_iter = iter(run.loader)
            autocast = autocast_for(run)
            t_iter = time.perf_counter()
            for step in range(run.start_iter + 1, max_iter + 1):
                images, targets = next(data_iter)
                hooks.skipped.take(targets, step)
                t_data = time.perf_counter() - t_iter
                images, targets = to_device(images, targets, run.device)
                result = train_step(run, images, targets, autocast, stop)
                iteration = step
                hooks.logger.window.add(result, time.perf_counter() - t_iter, t_data)
                error = hooks.guard.check(step, result)
                if error is not None:
                    hooks.checkpointer.save_last(step)
                    raise error
                if show_bar:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {result.total:.4f} lr {fmt_lr(result.lr)}", refresh=False)
                hooks.logger.after_step(step, result.lr)
                if _checkpoint_due(cfg, step, max_iter):
                    hooks.checkpointer.save_last(step)
                hooks.evaluator.after_step(step)
                if result.stop_now:
                    _stop(hooks.checkpointer, step, stop.name, main)
                t_iter = time.perf_counter()
            del data_iter
            hashes, final_eval = _finish(run, hooks.checkpointer, hooks.evaluator, iteration)
            skipped_total = int(du.all_reduce_sum([hooks.skipped.count])[0])
    finally:
        bar.close()
        if hooks.writer is not None:
            hooks.writer.flush()
            hooks.writer.close()
    return _summary(run, hooks, iteration, skipped_total, hashes, final_eval, time.perf_counter() - t_start)


def _open_hooks(run: TrainingRun, show_bar: bool) -> _Hooks:
    """Rank 0 writes ``config.yaml``, starts ``metrics.jsonl`` afresh (or, resumed, keeps it up to
    the checkpoint: the steps after it are redone and logged once) and opens TensorBoard; then the
    hooks, on every process (only rank 0's write)."""
    cfg, out_dir, main = run.cfg, run.out_dir, run.main
    metrics = MetricsFile(os.path.join(out_dir, METRICS_FILE), enabled=main)
    writer = None
    if main:
        save_config(cfg, os.path.join(out_dir, CONFIG_FILE))
        if run.resumed:
            metrics.truncate_after(run.start_iter)
        else:
            metrics.reset()
        writer = open_tensorboard(os.path.join(out_dir, "tb"), purge_step=run.start_iter if run.resumed else None)
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
    return _Hooks(
        metrics=metrics,
        writer=writer,
        checkpointer=checkpointer,
        logger=MetricsLogger(metrics, writer, cfg, run.per_rank_batch, run.shard_size, run.world, main, show_bar),
        evaluator=PeriodicEvaluator(
            cfg, run.model, out_dir, run.device, run.class_info["cat_ids"], metrics, writer, main
        ),
        guard=NonFiniteGuard(cfg["solver"]["max_nonfinite_steps"], metrics.write, main, checkpointer.last_path),
        skipped=SkippedImages(metrics.write, main),
    )


def _log_start(run: TrainingRun) -> None:
    cfg = run.cfg
    logger.info(
        "training %s (%s head, %s policy) on %d image(s), %d classes: iterations %d..%d, batch %d "
        "(%d process(es) x %d), lr %s, device %s",
        cfg["model"]["backbone"],
        cfg["model"]["head"],
        cfg["model"]["policy"],
        len(run.dataset),
        len(run.dataset.class_names),
        run.start_iter + 1,
        cfg["solver"]["max_iter"],
        cfg["solver"]["ims_per_batch"],
        run.world,
        run.per_rank_batch,
        fmt_lr(effective_lr(cfg)),
        run.device,
    )


def _progress_bar(run: TrainingRun, show_bar: bool):
    """The tqdm bar (disabled unless ``show_bar``) and the context that routes log lines around it."""
    import tqdm as _tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = _tqdm.tqdm(
        total=run.cfg["solver"]["max_iter"],
        initial=run.start_iter,
        disable=not show_bar,
        desc="train",
        unit="it",
        dynamic_ncols=True,
        file=sys.stderr,
    )
    redirect = logging_redirect_tqdm(loggers=[logging.getLogger("dynamask")]) if show_bar else contextlib.nullcontext()
    return bar, redirect


def _checkpoint_due(cfg: dict, step: int, max_iter: int) -> bool:
    """Every ``solver.checkpoint_period`` steps, except the last (the end writes that one)."""
    period = cfg["solver"]["checkpoint_period"]
    return bool(period and step % period == 0 and step != max_iter)


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
    hooks: _Hooks,
    iteration: int,
    skipped_total: int,
    hashes,
    final_eval,
    elapsed: float,
) -> dict:
    """The summary :func:`~dynamask.engine.train.train` returns, its ``final`` event in
    ``metrics.jsonl`` and the closing log lines."""
    last, checkpointer, nonfinite_total = hooks.logger.last, hooks.checkpointer, hooks.guard.total
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
    hooks.metrics.write(
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
