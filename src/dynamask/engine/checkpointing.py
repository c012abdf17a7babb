"""Checkpoints of a training run: what they hold, how they are written, how a run resumes.

``checkpoint_last.pt`` holds the model, optimiser, LR scheduler, iteration, the RNG states of
every process and the data-stream position, so a resumed run continues exactly as if it had not
stopped (on CPU: bit-identical weights). Only rank 0 writes, atomically (temp file + rename), so
a crash or a killed process never leaves a torn file: the last complete checkpoint stays intact.
``model_final.pt`` holds the model with its config and classes (no optimiser state).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import shutil
import tempfile
from typing import Any

import torch

from ..config import flatten
from ..errors import DynaMaskError
from . import distributed as du
from .build import checkpoint_mismatches, hyper_parameters, load_checkpoint, save_checkpoint
from .rng import get_rng_state, seed_everything, set_rng_state

__all__ = [
    "CHECKPOINT_LAST",
    "MODEL_FINAL",
    "Checkpointer",
    "check_writable",
    "check_free_space",
    "weights_hash",
    "load_resume_checkpoint",
    "restore_training_state",
    "config_differences",
]

logger = logging.getLogger("dynamask.train")

CHECKPOINT_LAST = "checkpoint_last.pt"
MODEL_FINAL = "model_final.pt"


def check_writable(out_dir: str) -> None:
    """Create ``out_dir`` and prove it writable before any work is done."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except FileExistsError:
        raise DynaMaskError(f"output directory {out_dir!r} cannot be created: a file of that name exists") from None
    except NotADirectoryError:
        raise DynaMaskError(
            f"output directory {out_dir!r} cannot be created: part of the path is a file, not a directory"
        ) from None
    except OSError as e:
        raise DynaMaskError(f"output directory {out_dir!r} cannot be created: {e.strerror or e}") from None
    if not os.path.isdir(out_dir):
        raise DynaMaskError(f"output directory {out_dir!r} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-", delete=True):
            pass
    except OSError as e:
        raise DynaMaskError(f"output directory {out_dir!r} is not writable: {e.strerror or e}") from None


def check_free_space(out_dir: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse to start when the output folder cannot hold the checkpoints training will write:
    checkpoint_last.pt twice (the new one is written beside the old before replacing it),
    model_final.pt, and 10 % for logs and evaluation results. checkpoint_last.pt holds the
    weights and buffers plus the optimiser's per-parameter state (AdamW two tensors, SGD one)."""
    final = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    last = final + (2 if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) else 1) * trainable
    existing = sum(
        os.path.getsize(os.path.join(out_dir, f))
        for f in (CHECKPOINT_LAST, MODEL_FINAL)
        if os.path.isfile(os.path.join(out_dir, f))
    )
    needed = int(1.1 * (2 * last + final)) - existing
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise DynaMaskError(
            f"output directory {out_dir!r} has {free / 2**20:.0f} MiB free, but training writes "
            f"checkpoints needing about {needed / 2**20:.0f} MiB "
            f"(checkpoint_last.pt ≈ {last / 2**20:.0f} MiB, kept twice while it is replaced, "
            f"plus model_final.pt); free space or choose another --out"
        )


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict (keys and raw tensor bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_differences(a: dict, b: dict) -> list:
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def load_resume_checkpoint(ckpt_path: str) -> dict:
    """``checkpoint_last.pt`` for ``--resume``, refused in one line when absent or not resumable."""
    if not os.path.isfile(ckpt_path):
        raise DynaMaskError(
            f"--resume: there is no checkpoint to resume from ({ckpt_path} does not exist); "
            f"start without --resume to train from scratch"
        )
    ckpt = load_checkpoint(ckpt_path)
    for key in ("optimizer", "scheduler", "iteration"):
        if key not in ckpt:
            raise DynaMaskError(f"--resume: {ckpt_path} is not a resumable checkpoint (no {key!r} entry)")
    return ckpt


def restore_training_state(
    ckpt: dict,
    ckpt_path: str,
    cfg: dict,
    num_classes: int,
    model,
    optimizer,
    scheduler,
    scaler,
    rank: int,
    world: int,
    per_rank_batch: int,
    dataset_size: int,
) -> tuple[int, int, int]:
    """Load a resumable checkpoint into the run; returns ``(iteration, data epoch, data position)``.
    RNG states and the data position carry over when the process count and batch are the same."""
    problems = checkpoint_mismatches(ckpt, cfg, num_classes)
    if problems:
        raise DynaMaskError(f"--resume: {ckpt_path} does not fit the configured model: {'; '.join(problems)}")
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise DynaMaskError(
            f"--resume: {ckpt_path} does not fit the configured model: {str(e).splitlines()[0]}"
        ) from None
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    start_iter = int(ckpt["iteration"])
    main = rank == 0
    states = (ckpt.get("rng") or {}).get("states") or []
    if len(states) == world:
        set_rng_state(states[rank])
    else:
        if main:
            logger.warning(
                "--resume: checkpoint has RNG states for %d process(es), this run has %d: reseeding", len(states), world
            )
        seed_everything(cfg["seed"] + rank + 7919 * start_iter)
    data = ckpt.get("data") or {}
    if data.get("world_size") == world and data.get("per_rank_batch") == per_rank_batch:
        data_epoch, data_pos = int(data["epoch"]), int(data["position"])
    else:
        consumed = start_iter * cfg["solver"]["ims_per_batch"] // world
        data_epoch, data_pos = divmod(consumed, math.ceil(dataset_size / world))
        if data and main:
            logger.warning("--resume: batch size or process count changed; data order continues approximately")
    if main:
        logger.info("resuming from %s at iteration %d", ckpt_path, start_iter)
    return start_iter, data_epoch, data_pos


class Checkpointer:
    """Writes ``checkpoint_last.pt`` (collective: every process contributes its RNG state) and
    ``model_final.pt``; a failed write names the file and says the previous one is intact."""

    def __init__(
        self,
        out_dir: str,
        cfg: dict,
        model: torch.nn.Module,
        optimizer,
        scheduler,
        scaler,
        class_info: dict[str, Any],
        per_rank_batch: int,
        shard_size: int,
        world: int,
        main: bool,
    ):
        self.last_path = os.path.join(out_dir, CHECKPOINT_LAST)
        self.final_path = os.path.join(out_dir, MODEL_FINAL)
        self.cfg, self.model, self.optimizer, self.scheduler, self.scaler = cfg, model, optimizer, scheduler, scaler
        self.class_info = class_info
        self.per_rank_batch, self.shard_size, self.world, self.main = per_rank_batch, shard_size, world, main

    def state(self, iteration: int, full: bool) -> dict[str, Any]:
        cfg = self.cfg
        state = {
            "model": self.model.state_dict(),
            "config": copy.deepcopy(cfg),
            **self.class_info,
            "iteration": iteration,
            "hyper_parameters": hyper_parameters(cfg, self.class_info["num_classes"]),
        }
        if full:
            epoch, pos = divmod(iteration * self.per_rank_batch, self.shard_size)
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                data={
                    "epoch": epoch,
                    "position": pos,
                    "per_rank_batch": self.per_rank_batch,
                    "world_size": self.world,
                    "seed": int(cfg["seed"]),
                },
            )
            if self.scaler is not None:
                state["scaler"] = self.scaler.state_dict()
        return state

    def save_last(self, iteration: int) -> None:
        states = du.all_gather_object(get_rng_state())
        if self.main:
            state = self.state(iteration, full=True)
            state["rng"] = {"world_size": self.world, "states": states}
            self._write(self.last_path, state, iteration)
        du.barrier()

    def save_final(self, iteration: int) -> None:
        if self.main:
            self._write(self.final_path, self.state(iteration, full=False), iteration)

    @staticmethod
    def _write(path: str, state: dict, iteration: int) -> None:
        try:
            save_checkpoint(path, state)
        except OSError as e:
            kept = (
                f"the previous {os.path.basename(path)} is intact"
                if os.path.exists(path)
                else "no earlier checkpoint exists"
            )
            raise DynaMaskError(
                f"could not write {path} at iteration {iteration}: {e.strerror or e} "
                f"({kept}; free space and run again with --resume)"
            ) from None
