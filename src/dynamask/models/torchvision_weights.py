"""torchvision's detection weights in a dynamask model.

Why: users already have a trained ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` (v1) —
the files ``torch.hub`` caches, or their own — and want DynaMask masks on that detector. Our
models are torchvision's ``FasterRCNN`` with a pluggable mask branch, so backbone, FPN, RPN and box
head keep torchvision's names; what differs is handled here:

* old-format keys (``rpn.head.conv.weight``, ``mask_head.mask_fcn1.weight``) are renamed to the
  layouts current torchvision builds, and frozen-batch-norm files (no ``num_batches_tracked``)
  fill that counter from the model;
* torchvision's own mask head (``roi_heads.mask_head`` / ``mask_predictor``) goes into our Mask
  R-CNN branch when that head is asked for; it was trained in the ``"torchvision"`` mask geometry;
* a file with another class count keeps everything but the box predictor (and the mask
  predictor's last layer), which start from their initialisation;
* :func:`coco_label_space` is torchvision's 91-entry COCO label space (label = COCO category id).

Anything else that does not fit is refused with the file and the first mismatching key.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from ..errors import DynaMaskError

MASK_BRANCH = "roi_heads.mask_branch."
#: torchvision's mask-head prefixes → ours (the Mask R-CNN branch)
MASK_HEAD_PREFIXES = {
    "roi_heads.mask_head.": MASK_BRANCH + "mask_head.",
    "roi_heads.mask_predictor.": MASK_BRANCH + "mask_predictor.",
}
#: weights whose shape depends on the class count
CLASS_SPECIFIC = ("roi_heads.box_predictor.", MASK_BRANCH + "mask_predictor.mask_fcn_logits.")


def coco_label_space() -> list[tuple[int, str]]:
    """torchvision's COCO labels 1..90 as (category id, name); ids without a category are "N/A"."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return [(i, str(n)) for i, n in enumerate(names) if i > 0]


def read_torchvision_detection_file(path: str | os.PathLike) -> dict | None:
    """The state dict of a torchvision detection file; ``None`` for a dynamask checkpoint (a dict
    with a ``"model"`` entry). Unreadable, truncated or non-detection files raise
    :class:`DynaMaskError` naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DynaMaskError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise DynaMaskError(
            f"{path}: not a readable dynamask checkpoint or torchvision weights file, truncated or "
            f"corrupt? ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if isinstance(obj, dict) and "model" in obj:
        return None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DynaMaskError(f"{path}: not a dynamask checkpoint (no 'model' entry) nor a state dict of tensors")
    keys = list(obj)
    if not any(k.startswith("backbone.body.") for k in keys) or "roi_heads.box_predictor.cls_score.weight" not in obj:
        raise DynaMaskError(
            f"{path}: not a dynamask checkpoint (no 'model' entry) nor the state dict of a "
            f"torchvision detection model (first key "
            f"{keys[0]!r}; expected 'backbone.body.*', 'rpn.*', 'roi_heads.box_predictor.*'); "
            f"ResNet classification weights go to model.weights_backbone"
        )
    return obj


def file_num_classes(state: dict) -> int:
    """Classes of a torchvision detection state dict, background included."""
    return int(state["roi_heads.box_predictor.cls_score.weight"].shape[0])


def has_mask_head(state: dict) -> bool:
    return any(k.startswith("roi_heads.mask_head.") for k in state)


def _upgraded(key: str, own: dict) -> str:
    """Rename a key of an older torchvision layout to the one ``own`` (the model) uses."""
    for src, dst in MASK_HEAD_PREFIXES.items():
        if key.startswith(src):
            key = dst + key[len(src) :]
            break
    if key in own:
        return key
    m = re.fullmatch(r"rpn\.head\.conv\.(weight|bias)", key)
    if m and f"rpn.head.conv.0.0.{m[1]}" in own:
        return f"rpn.head.conv.0.0.{m[1]}"
    m = re.fullmatch(re.escape(MASK_BRANCH) + r"mask_head\.mask_fcn(\d+)\.(weight|bias)", key)
    if m:
        new = f"{MASK_BRANCH}mask_head.{int(m[1]) - 1}.0.{m[2]}"
        if new in own:
            return new
    return key


def load_torchvision_detection(model: nn.Module, state: dict, path: str, with_mask_head: bool) -> dict:
    """Load a torchvision detection state dict into ``model`` (a ``DynaMaskRCNN``).

    Backbone, FPN, RPN and box head always; torchvision's mask head too when ``with_mask_head``
    (the model's mask branch must then be the Mask R-CNN head of the same widths). Returns what
    happened: ``{"num_classes", "reinitialised": [prefixes], "mask_head_loaded": bool}``.
    """
    own = model.state_dict()
    n_file, n_model = file_num_classes(state), int(own["roi_heads.box_predictor.cls_score.weight"].shape[0])
    classes_differ = n_file != n_model
    converted = {}
    for key, value in state.items():
        key = _upgraded(key, own)
        if key.startswith(MASK_BRANCH) and not with_mask_head:
            continue
        if key.endswith("num_batches_tracked") and key not in own:
            continue  # a batch-norm file into a frozen-batch-norm model
        converted[key] = value
    wanted = [k for k in own if not k.startswith(MASK_BRANCH) or with_mask_head]
    for key in wanted:  # frozen-batch-norm files carry no counters
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = own[key]
    reinitialised = set()
    for key in wanted:
        if key not in converted:
            raise DynaMaskError(
                f"{path}: does not fit the model: first mismatching key {key!r} is missing from the "
                f"file (a {'Faster' if not has_mask_head(state) else 'Mask'} R-CNN file of "
                f"another architecture?)"
            )
        if converted[key].shape != own[key].shape:
            prefix = next((p for p in CLASS_SPECIFIC if key.startswith(p)), None)
            if prefix and classes_differ:
                reinitialised.add(prefix.rstrip("."))
                continue
            raise DynaMaskError(
                f"{path}: does not fit the model: first mismatching key {key!r} has shape "
                f"{tuple(converted[key].shape)} in the file, {tuple(own[key].shape)} in the model"
            )
    extra = [k for k in converted if k not in own]
    if extra:
        raise DynaMaskError(
            f"{path}: does not fit the model: first mismatching key {extra[0]!r} is in the file, not in the model"
        )
    load = {k: v for k, v in converted.items() if k in wanted and not any(k.startswith(p + ".") for p in reinitialised)}
    model.load_state_dict(load, strict=False)
    return {
        "num_classes": n_file,
        "reinitialised": sorted(reinitialised),
        "mask_head_loaded": bool(with_mask_head and any(k.startswith(MASK_BRANCH) for k in load)),
    }
