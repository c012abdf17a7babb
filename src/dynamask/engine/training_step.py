"""One optimisation step of a :class:`~dynamask.engine.training_run.TrainingRun`.

Forward, then one decision every process agrees on (a non-finite loss anywhere skips the update
everywhere, a signal anywhere stops everyone after this step), then backward, gradient clipping,
the update and the LR schedule. :class:`StepResult` is what the loop's hooks read of it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import distributed as du
from .signals import StopFlag
from .training_run import TrainingRun

__all__ = ["StepResult", "train_step", "autocast_for"]


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


def autocast_for(run: TrainingRun) -> Callable[[], Any]:
    """The context factory :func:`train_step` runs the forward pass under: CUDA autocast in
    ``bf16``/``fp16`` when ``run.amp`` asks for it, else a context that does nothing."""
    if run.amp == "none":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if run.amp == "bf16" else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)
