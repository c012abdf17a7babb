"""Optimiser and learning-rate schedule built from ``cfg["solver"]``."""

from __future__ import annotations

import bisect

import torch

from ..config import effective_lr
from ..errors import ConfigError

__all__ = ["make_lr_lambda", "build_optimizer", "build_scheduler"]


def make_lr_lambda(warmup_iters: int, warmup_factor: float, steps, gamma: float):
    """LR multiplier for step ``it`` (0-based count of finished steps): linear
    warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps, then
    ``gamma ** (number of solver.steps <= it)``."""
    steps = sorted(int(s) for s in steps)

    def lr_lambda(it: int) -> float:
        factor = 1.0
        if it < warmup_iters:
            alpha = it / float(warmup_iters)
            factor = warmup_factor * (1.0 - alpha) + alpha
        return factor * (gamma ** bisect.bisect_right(steps, it))

    return lr_lambda


def build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; the Mask Switch Module in its own group."""
    s = cfg["solver"]
    lr = effective_lr(cfg)
    # The Mask Switch Module learns a classification from a noisy per-batch target; at the
    # detector's LR its logits moved too slowly to become decisive in a CPU-length run.
    switch = [p for n, p in model.named_parameters() if p.requires_grad and ".switch." in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and ".switch." not in n]
    params = [{"params": rest}] + ([{"params": switch, "lr": lr * s["switch_lr_multiplier"]}] if switch else [])
    if s["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=s["momentum"], weight_decay=s["weight_decay"])
    if s["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(s["momentum"], 0.999), weight_decay=s["weight_decay"])
    raise ConfigError(f"solver.optimizer: unsupported optimizer {s['optimizer']!r}")


def build_scheduler(cfg: dict, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then step decay; the LR is a function of the iteration (skipped steps advance it too)."""
    s = cfg["solver"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_lr_lambda(s["warmup_iters"], s["warmup_factor"], s["steps"], s["gamma"])
    )
