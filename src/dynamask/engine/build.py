"""Training's side of checkpoints: writing them, and reading the weights a config names.

Reading a checkpoint into a model (:func:`~dynamask.inference.load_checkpoint`,
:func:`~dynamask.inference.model_from_checkpoint`, ...) lives in :mod:`dynamask.inference`, and
building a model from a config in :func:`dynamask.models.build_model`, so that inference never
imports the engine. The checkpoint format is described there.
"""

from __future__ import annotations

import os

import torch
import torchvision

from .. import __version__
from ..atomic import atomic_path
from ..errors import DynaMaskError

# Re-exported: training code (engine/training_run.py and its helpers) imports them from here.
from ..inference import checkpoint_geometry, checkpoint_mismatches, hyper_parameters, load_checkpoint
from ..models.detector import build_model

__all__ = [
    "build_model",
    "checkpoint_geometry",
    "checkpoint_mismatches",
    "fits_coco_label_space",
    "hyper_parameters",
    "library_versions",
    "load_checkpoint",
    "save_checkpoint",
    "torchvision_weights_plan",
]


def library_versions() -> dict:
    """The versions a checkpoint records, to tell later which code wrote it."""
    return {"dynamask": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def save_checkpoint(path: str, state: dict) -> None:
    """Write atomically: a temp file in the same folder, then os.replace (never a torn file)."""
    with atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save({**state, "versions": library_versions()}, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut leaves the old or the new file


def torchvision_weights_plan(cfg: dict) -> dict | None:
    """The torchvision detection file named by ``model.init_weights`` or ``model.detector_weights``
    (read once), or ``None`` when neither names one: ``{"key", "path", "state", "num_classes"}``."""
    from ..models.torchvision_weights import file_num_classes, read_torchvision_detection_file

    for key in ("init_weights", "detector_weights"):
        path = cfg["model"].get(key)
        if path:
            try:
                state = read_torchvision_detection_file(path)
            except DynaMaskError as exc:
                raise DynaMaskError(f"model.{key}: {exc}") from None
            if state is not None:
                return {"key": key, "path": path, "state": state, "num_classes": file_num_classes(state)}
    return None


def fits_coco_label_space(cat_ids, class_names) -> bool:
    """True when every category (id, name) is torchvision's COCO category of that id (names
    compared case-insensitively): then labels can be the category ids, as in torchvision."""
    from ..models.torchvision_weights import coco_label_space

    coco = {i: n.lower() for i, n in coco_label_space()}
    return bool(cat_ids) and all(
        coco.get(int(i)) == str(n).lower() and str(n) != "N/A" for i, n in zip(cat_ids, class_names)
    )
