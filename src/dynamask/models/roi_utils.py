"""Small helpers shared by the mask branches: RoI formats, level scales, per-image splits."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rois_with_batch_index(boxes: list[Tensor]) -> Tensor:
    """List of per-image N_i×4 boxes → ΣN_i×5 (batch index, x0, y0, x1, y1) for roi_align."""
    if not boxes:
        return torch.zeros((0, 5))
    index = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([index, torch.cat(boxes)], dim=1)


def exporting() -> bool:
    """True while torch.jit.trace / torch.onnx.export records the model: shapes and box values
    must then stay tensors (no Python ints, no data-dependent windows)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def level_scale(feature: Tensor, image_shapes: list[tuple[int, int]]) -> float:
    """True scale of an FPN level (a power of two, e.g. 1/16 for P4).

    The map covers the padded batch, so feature size / image size overstates the scale by the
    padding. torchvision's MultiScaleRoIAlign uses the height alone, which rounds to the wrong
    power of two once padding adds more than 41 % (e.g. a 40-px-high image padded to 64); the
    dimension with the least relative padding (the smaller ratio) is right whenever either is."""
    max_height = max(s[0] for s in image_shapes)
    max_width = max(s[1] for s in image_shapes)
    ratio = min(feature.shape[-2] / max_height, feature.shape[-1] / max_width)
    return 2.0 ** round(math.log2(ratio))


def split_groups(groups: list[tuple[int, Tensor, Tensor]], counts: list[int]):
    """Per-image view of (stage, global indices, masks) groups: for image i a list of
    (stage, local indices, masks). A loop over images × groups, never over instances."""
    out = []
    start = 0
    for count in counts:
        stop = start + count
        image_groups = []
        for stage, idx, masks in groups:
            keep = (idx >= start) & (idx < stop)
            if bool(keep.any()):
                image_groups.append((stage, idx[keep] - start, masks[keep]))
        out.append(image_groups)
        start = stop
    return out
