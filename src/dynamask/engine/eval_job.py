"""What one evaluation runs on, prepared before the model runs.

:func:`prepare_job` resolves the model (given, or loaded from a checkpoint through
:mod:`dynamask.inference`), the config, the validation set, the label → COCO category id map, the
images evaluated and the device; :func:`job_loader` batches any share of those images and
:func:`check_image_sizes` checks image files against their json sizes. The single-process
:func:`~dynamask.engine.evaluate.evaluate` and the sharded loop
(:mod:`dynamask.engine.sharded_evaluate`) both start here.

A job is a dict: ``model``, ``cfg``, ``dataset``, ``cat_ids``, ``indices`` (the images evaluated),
``dev``, ``max_dets``, ``score_thresh``, ``batch_size`` and ``num_workers``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..errors import DynaMaskError
from ..inference import model_from_checkpoint, resolve_device
from . import distributed as du

__all__ = ["prepare_job", "job_loader", "check_image_sizes"]

logger = logging.getLogger("dynamask.evaluate")


def prepare_job(cfg, weights, model, dataset, max_images, device, batch_size: int, cat_ids) -> dict[str, Any]:
    """Model, config, dataset, category ids, the images evaluated (not yet checked) and the device."""
    from ..config import default_config

    ckpt: dict = {}
    model_given = model is not None
    if model is None:
        if weights is None:
            raise DynaMaskError("evaluate: give a checkpoint (weights) or a model")
        model, ckpt = model_from_checkpoint(os.fspath(weights), cfg)
        cfg = cfg or ckpt.get("config")
    if cfg is None:
        cfg = default_config()
    test_cfg = {**default_config()["test"], **(cfg.get("test") or {})}
    if batch_size < 1:
        raise DynaMaskError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if dataset is None:
        dataset = _validation_dataset(cfg)
    cat_ids = _category_ids(cat_ids, ckpt, dataset)
    indices = _image_indices(dataset, max_images)
    if not hasattr(model, "policy") and hasattr(model, "module"):  # DistributedDataParallel / DataParallel
        model = model.module
    if device is None and model_given:  # keep a given model where it is (e.g. cuda:1 during training)
        param = next(iter(model.parameters()), None)
        dev = param.device if param is not None else du.process_device(resolve_device(None))
    else:
        dev = du.process_device(resolve_device(device))  # cuda: this process's own GPU under torchrun
    return {
        "model": model,
        "cfg": cfg,
        "dataset": dataset,
        "cat_ids": cat_ids,
        "indices": indices,
        "dev": dev,
        "max_dets": int(test_cfg["max_dets"]),
        "score_thresh": float(test_cfg["score_thresh"]),
        "batch_size": int(batch_size),
        "num_workers": int((cfg.get("data") or {}).get("num_workers", 0) or 0),
    }


def job_loader(job: dict[str, Any], indices: list[int]):
    """The job's images at ``indices``, in order, ``batch_size`` per batch (no shuffling)."""
    from ..data import collate_fn

    dataset = job["dataset"]
    subset = dataset if indices == list(range(len(dataset))) else torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=job["batch_size"], shuffle=False, num_workers=job["num_workers"], collate_fn=collate_fn
    )


def check_image_sizes(dataset, indices: list[int]) -> None:
    """Image size vs json width/height (EXIF rule), as train's loading does, before the model runs."""
    if indices and hasattr(dataset, "check_image_sizes"):
        dataset.check_image_sizes(indices)


def _validation_dataset(cfg: dict):
    """``data.val_json`` / ``data.val_images`` as a dataset without transforms (images as stored)."""
    data_cfg = cfg.get("data") or {}
    val_json, val_images = data_cfg.get("val_json"), data_cfg.get("val_images")
    if not val_json or not val_images:
        raise DynaMaskError(
            "no validation set: set data.val_json and data.val_images "
            "(in the config or as data.val_json=... on the command line)"
        )
    if not os.path.isdir(val_images):
        raise DynaMaskError(f"data.val_images: {val_images!r} is not a folder")
    from ..data import CocoInstanceDataset

    return CocoInstanceDataset(val_json, val_images, transforms=None, keep_empty=True, validate_masks=False)


def _category_ids(cat_ids, ckpt: dict, dataset) -> list[int]:
    """Label → COCO category id: as given, else the checkpoint's, else the dataset's."""
    if cat_ids is None:
        cat_ids = ckpt.get("cat_ids") or getattr(dataset, "cat_ids", None)
    if cat_ids is None:
        raise DynaMaskError("evaluate: cannot map labels to COCO category ids (no cat_ids)")
    cat_ids = [int(c) for c in cat_ids]
    ds_cat_ids = getattr(dataset, "cat_ids", None)
    if ds_cat_ids is not None and list(ds_cat_ids) != cat_ids:
        logger.warning(
            "the model's category ids %s differ from the validation set's %s; labels are mapped with the model's",
            cat_ids,
            list(ds_cat_ids),
        )
    return cat_ids


def _image_indices(dataset, max_images: int | None) -> list[int]:
    """The images evaluated (the first ``max_images``)."""
    indices = list(range(len(dataset)))
    if max_images is not None:
        if max_images < 1:
            raise DynaMaskError(f"max_images must be >= 1, got {max_images}")
        indices = indices[:max_images]
    if not indices:
        raise DynaMaskError("the validation set has no images")
    return indices
