"""The model-free ceiling of a mask resolution: ground truth cropped to its box at R×R (the target a
head of that resolution learns) and pasted back. What a benchmark reports beside its results: no
head of that resolution can do better through this geometry."""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.geometry import roi_mask_targets
from ..models.paste import paste_masks

__all__ = ["round_trip_masks", "round_trip_iou"]


def round_trip_masks(masks: Tensor, boxes: Tensor, resolution: int, geometry: str = "exact") -> Tensor:
    """Ground-truth masks (N×H×W) cropped to their boxes at this resolution (the targets a head of
    that resolution is trained on) and pasted back, binarised at 0.5: N×H×W bool."""
    target = roi_mask_targets(masks, boxes, resolution, geometry)
    return paste_masks(target[:, None], boxes, masks.shape[-2:], geometry=geometry)[:, 0] >= 0.5


def round_trip_iou(masks: Tensor, boxes: Tensor, resolution: int, geometry: str = "exact") -> Tensor:
    """Per instance, the IoU of a ground-truth mask (N×H×W) with its :func:`round_trip_masks`:
    the best mask any head of that resolution can deliver through this geometry — the ceiling a
    mask benchmark reports beside its results."""
    pasted = round_trip_masks(masks, boxes, resolution, geometry)
    gt = masks.bool()
    inter = (pasted & gt).flatten(1).sum(1).double()
    union = (pasted | gt).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
