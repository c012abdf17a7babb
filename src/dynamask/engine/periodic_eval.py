"""Evaluation during training: every ``test.eval_period`` steps and at the end.

Under DDP every process evaluates its shard of the validation images (no process idles at a
barrier while rank 0 runs the model over all of them); rank 0 gathers the detections, computes the
metrics once, writes ``eval/`` and logs them (see :func:`dynamask.engine.evaluate.evaluate`). Before
that, rank 0's buffers (BatchNorm statistics, which DDP broadcasts from rank 0 at each forward)
are copied to every process, so the shards are evaluated with one model, the one
``checkpoint_last.pt`` holds.

It runs under a forked RNG (evaluation must not shift the training stream, so a run with and
without evaluation trains the same weights) and a failure is logged and recorded, never fatal:
hours of training are not lost to a broken validation file. A failure on one process is raised
on every process at the same step (the evaluation agrees on it), so none is left waiting.
"""

from __future__ import annotations

import logging
import os

import torch

from . import distributed as du
from .metrics import MetricsFile, flat_numbers

__all__ = ["PeriodicEvaluator"]

logger = logging.getLogger("dynamask.train")


class PeriodicEvaluator:
    def __init__(
        self,
        cfg: dict,
        model: torch.nn.Module,
        out_dir: str,
        device: torch.device,
        cat_ids,
        metrics: MetricsFile,
        writer,
        main: bool,
    ):
        self.cfg, self.model, self.device, self.cat_ids = cfg, model, device, cat_ids
        self.out_dir = os.path.join(out_dir, "eval")
        self.metrics, self.writer, self.main = metrics, writer, main
        self.period = cfg["test"]["eval_period"]
        self.max_iter = cfg["solver"]["max_iter"]
        self.enabled = bool(cfg["data"].get("val_json"))
        self.evaluate_fn = None
        if self.enabled:
            try:
                from .evaluate import evaluate as evaluate_fn
            except ImportError as e:
                if main:
                    logger.warning(
                        "evaluation during training disabled: dynamask.engine.evaluate is not available (%s)", e
                    )
            else:
                self.evaluate_fn = evaluate_fn

    def after_step(self, step: int) -> None:
        if self.period and step % self.period == 0 and step != self.max_iter:
            self.run(step)

    def run(self, iteration: int) -> dict | None:
        """Evaluate now (collective: every process takes part, each on its shard); the metrics on
        every process, None when disabled or failed."""
        result = None
        if self.evaluate_fn is None:
            return None
        if self.main:
            logger.info("evaluating at iteration %d", iteration)
        if du.is_dist():
            with torch.no_grad():
                for buf in self.model.buffers():
                    torch.distributed.broadcast(buf, src=0)
        devices = [self.device.index] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                result = self.evaluate_fn(
                    self.cfg,
                    model=self.model,
                    out_dir=self.out_dir,
                    device=self.device,
                    progress=False,
                    cat_ids=self.cat_ids,
                )
            except Exception as e:  # keep training (every process gets here at the same step)
                logger.error("evaluation at iteration %d failed: %s: %s", iteration, type(e).__name__, e)
                self.metrics.write(
                    {"iteration": iteration, "event": "eval_failed", "error": f"{type(e).__name__}: {e}"}
                )
                result = None
            finally:
                self.model.train()
        if result is not None:
            self.metrics.write({"iteration": iteration, "event": "eval", "metrics": result})
        if self.writer is not None and isinstance(result, dict):
            for k, v in flat_numbers(result).items():
                self.writer.add_scalar(f"eval/{k}", v, iteration)
        return result
