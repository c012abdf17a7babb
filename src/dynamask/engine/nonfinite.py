"""Non-finite losses and gradients: skip the step, count, and stop after too many in a row.

A NaN in one step (a degenerate box, an fp16 overflow) should not end a long run, but a
diverged run should stop before it overwrites good checkpoints with garbage: after
``solver.max_nonfinite_steps`` consecutive bad steps the loop writes ``checkpoint_last.pt`` and
raises :class:`NonFiniteLossError` with advice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from ..errors import DynaMaskError

__all__ = ["NonFiniteLossError", "NonFiniteGuard"]

logger = logging.getLogger("dynamask.train")


class NonFiniteLossError(DynaMaskError):
    """Too many consecutive steps with a non-finite loss (``solver.max_nonfinite_steps``)."""

    def __init__(self, message: str, iteration: int = 0, checkpoint: str = ""):
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint


class NonFiniteGuard:
    """Counts skipped steps; :meth:`check` reports one and returns the error to raise at the limit."""

    def __init__(self, limit_setting: int, write_event: Callable[[dict], None], main: bool, checkpoint_path: str):
        self.limit_setting = limit_setting
        self.limit = max(1, int(limit_setting))
        self.write_event = write_event
        self.main = main
        self.checkpoint_path = checkpoint_path
        self.in_a_row = 0
        self.total = 0

    def check(self, step: int, result) -> NonFiniteLossError | None:
        """Account for one step (a :class:`~dynamask.engine.training_step.StepResult`)."""
        if result.finite:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        self.total += 1
        if not math.isfinite(result.total):
            what = "loss"
        elif not result.backward_done:  # another process had a non-finite loss
            what = "loss (on another process)"
        else:
            what = "gradient norm"
        bad_terms = ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items() if not math.isfinite(v))
        if self.main:
            logger.warning(
                "non-finite %s at iteration %d (%s); step skipped (%d in a row, limit %d)",
                what,
                step,
                bad_terms or f"total={result.total:.4g}, grad_norm={result.grad_norm:.4g}",
                self.in_a_row,
                self.limit,
            )
        self.write_event(
            {
                "iteration": step,
                "event": "nonfinite_loss",
                "total_loss": result.total,
                "grad_norm": result.grad_norm,
                "losses": result.losses,
                "consecutive": self.in_a_row,
            }
        )
        if self.in_a_row < self.limit:
            return None
        return NonFiniteLossError(
            f"training diverged: non-finite {what} in {self.in_a_row} consecutive step(s) up to "
            f"iteration {step} (solver.max_nonfinite_steps={self.limit_setting}); "
            f"checkpoint written to {self.checkpoint_path}. Try a lower solver.base_lr, a longer "
            f"solver.warmup_iters, solver.clip_grad_norm or solver.amp=none",
            iteration=step,
            checkpoint=self.checkpoint_path,
        )
