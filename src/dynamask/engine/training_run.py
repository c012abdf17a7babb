"""A training run before its first step: :class:`TrainingRun` and :func:`build_run`, which builds it.

Building checks the config and the output folder first, then makes the data set, the model, the
optimiser, the LR schedule and the loader, and restores a resumable checkpoint when asked to: every
user error (bad config, unwritable folder, nothing to resume, other classes than the checkpoint's)
comes before anything is trained, and nothing but the output folder's write test is written.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError
from ..errors import DynaMaskError
from . import distributed as du
from .build import build_model, fits_coco_label_space, torchvision_weights_plan
from .checkpointing import (
    CHECKPOINT_LAST,
    check_free_space,
    check_writable,
    config_differences,
    load_resume_checkpoint,
    restore_training_state,
)
from .data_stream import build_loader, load_train_dataset
from .initialise import initialise_weights
from .optim import build_optimizer, build_scheduler
from .rng import seed_everything

__all__ = ["TrainingRun", "build_run"]

logger = logging.getLogger("dynamask.train")


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


def build_run(cfg: dict, out_dir: str, resume: bool, dev: torch.device) -> TrainingRun:
    """Check the config and output folder, then build data, model, optimiser and loader, restoring
    a resumable checkpoint when ``resume``. Errors come before anything is written."""
    rank, world = du.get_rank(), du.get_world_size()
    _check_config(cfg, world)
    check_writable(out_dir)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_LAST)
    ckpt = load_resume_checkpoint(ckpt_path) if resume else None
    if ckpt is None and rank == 0 and os.path.exists(ckpt_path):
        logger.warning("%s exists and will be overwritten (use --resume to continue that run)", ckpt_path)
    amp = _usable_amp(cfg["solver"]["amp"], dev, rank == 0)

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

    per_rank_batch = cfg["solver"]["ims_per_batch"] // world
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

    train_model = _parallel_model(model, dev, world)
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


def _check_config(cfg: dict, world: int) -> None:
    """What training needs of the config beyond its validation: a global batch that divides among
    the processes, and a training set."""
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


def _usable_amp(amp: str, dev: torch.device, main: bool) -> str:
    """``solver.amp``, or ``"none"`` off CUDA (mixed precision is used on CUDA only)."""
    if amp != "none" and dev.type != "cuda":
        if main:
            logger.warning("solver.amp=%s is ignored on %s (mixed precision is used on CUDA only)", amp, dev.type)
        amp = "none"
    return amp


def _parallel_model(model: torch.nn.Module, dev: torch.device, world: int) -> torch.nn.Module:
    """The module the steps run: the model itself in one process, its DDP wrapper in several
    (``find_unused_parameters``: the DynaMask head does not use every branch in every step)."""
    if world > 1:
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True
        )
    return model


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
