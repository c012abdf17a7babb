"""What training reports: ``metrics.jsonl`` (strict JSON lines), TensorBoard scalars, the log line.

Losses are averaged over a window of ``solver.log_period`` steps (skipped steps leave them out)
and over processes, so one record stands for the whole batch, whatever the process count.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from . import distributed as du

__all__ = ["MetricsFile", "LossWindow", "MetricsLogger", "open_tensorboard", "flat_numbers", "fmt_lr", "fmt_duration"]

logger = logging.getLogger("dynamask.train")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class MetricsFile:
    """Append-only JSON-lines writer (a no-op on ranks other than 0). Non-finite numbers are
    written as the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays strict JSON."""

    def __init__(self, path: str, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(_jsonable(record), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Keep only records up to ``iteration`` (on resume: the redone steps are logged once)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                if isinstance(rec, dict) and isinstance(rec.get("iteration"), int) and rec["iteration"] > iteration:
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def reset(self) -> None:
        if self.enabled:
            with open(self.path, "w", encoding="utf-8"):
                pass


def open_tensorboard(log_dir: str, purge_step: int | None):
    """A SummaryWriter, or None (with a warning) when TensorBoard is missing: train anyway."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:
        logger.warning("TensorBoard logging disabled (%s: %s)", type(e).__name__, e)
        return None
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)


def flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    """Finite numbers of a nested dict under slash-joined keys (for TensorBoard)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_numbers(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out


def fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LossWindow:
    """Sums of the losses, gradient norm and timings since the last record."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.time = self.data_time = 0.0
        self.iters = 0

    def add(self, result, seconds: float, data_seconds: float) -> None:
        self.time += seconds
        self.data_time += data_seconds
        self.iters += 1
        if not result.finite:
            return
        items = list(result.losses.items()) + [("total_loss", result.total)]
        if math.isfinite(result.grad_norm):
            items.append(("grad_norm", result.grad_norm))
        for k, v in items:
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1


class MetricsLogger:
    """Every ``solver.log_period`` steps (and at the last): one metrics.jsonl record, TensorBoard
    scalars, and a log line when no progress bar shows. Collective when several processes run."""

    def __init__(
        self,
        metrics: MetricsFile,
        writer,
        cfg: dict,
        per_rank_batch: int,
        shard_size: int,
        world: int,
        main: bool,
        show_bar: bool,
    ):
        s = cfg["solver"]
        self.metrics, self.writer = metrics, writer
        self.log_period, self.max_iter, self.batch = s["log_period"], s["max_iter"], s["ims_per_batch"]
        self.per_rank_batch, self.shard_size = per_rank_batch, shard_size
        self.world, self.main, self.show_bar = world, main, show_bar
        self.window = LossWindow()
        self.last: dict[str, Any] = {}

    def after_step(self, step: int, lr: float) -> None:
        w = self.window
        if not ((step % self.log_period == 0 or step == self.max_iter) and w.sums):  # (skipped steps: events only)
            return
        means = {k: w.sums[k] / w.counts[k] for k in w.sums}
        means = du.reduce_dict(means) if self.world > 1 else means
        t_per_iter = w.time / max(1, w.iters)
        rec: dict[str, Any] = {"iteration": step}
        rec.update({k: v for k, v in sorted(means.items()) if k not in ("total_loss", "grad_norm")})
        rec.update(
            total_loss=means.get("total_loss", float("nan")),
            lr=lr,
            grad_norm=means.get("grad_norm", float("nan")),
            time_per_iter=t_per_iter,
            data_time=w.data_time / max(1, w.iters),
            images_per_s=self.batch / t_per_iter if t_per_iter > 0 else 0.0,
            epoch=(step * self.per_rank_batch) // self.shard_size,
        )
        self.metrics.write(rec)
        self.last = rec
        if self.writer is not None:
            for k, v in rec.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    tag = f"loss/{k}" if k.startswith("loss") or k == "total_loss" else f"train/{k}"
                    self.writer.add_scalar(tag, v, step)
        if self.main and not self.show_bar:
            logger.info(
                "iter %d/%d  loss %.4f  lr %s  %.3fs/it  %.1f img/s  eta %s",
                step,
                self.max_iter,
                rec["total_loss"],
                fmt_lr(lr),
                t_per_iter,
                rec["images_per_s"],
                fmt_duration(t_per_iter * (self.max_iter - step)),
            )
        self.window = LossWindow()
