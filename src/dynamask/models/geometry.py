"""Mask geometry: where a box's M×M mask cells lie in the image, used alike by the RoI features,
the mask targets and the paste.

Two geometries, chosen per model with ``mask_geometry``:

``"exact"`` (default)
    A box is the continuous rectangle [x0, x1] × [y0, y1] in COCO's pixel-edge coordinates (pixel
    i covers [i, i + 1]) and the M×M cells tile it exactly. RoIAlign runs with ``aligned=True``
    (its sample points are shifted by half a pixel so that pixel i's value sits at i + 0.5), the
    mask targets average the ground truth over each cell, and the paste maps cell edges back
    onto the box edges. A perfect mask survives the round trip target →
    paste almost unchanged, at every resolution (``tests/test_geometry.py``).

``"torchvision"``
    Mask R-CNN's legacy geometry, as torchvision implements it: RoIAlign ``aligned=False`` for the
    RoI feature and the targets (samples half a pixel off), and a paste that pads the mask by one
    cell around an integer-truncated box with ``+1`` widths. It shifts each mask by about half a
    pixel and grows it by about one, which costs small objects and fine masks the most. Kept bit
    for bit for checkpoints trained with it (and the equivalence test against torchvision).

The FAM's image-level pooling is ``aligned=True`` in both (it always was); in ``"torchvision"``
the shared RoI feature beside it sits half a cell away, as it did before.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import box_area, roi_align

from ..moved import moved_names
from .roi_utils import exporting, level_scale, rois_with_batch_index

MASK_GEOMETRIES = ("exact", "torchvision")


def check_geometry(geometry: str) -> str:
    if geometry not in MASK_GEOMETRIES:
        raise ValueError(f"mask_geometry must be one of {', '.join(MASK_GEOMETRIES)}; got {geometry!r}")
    return geometry


def is_aligned(geometry: str) -> bool:
    """RoIAlign's ``aligned`` flag for this geometry."""
    return check_geometry(geometry) == "exact"


class MaskRoIPool(nn.Module):
    """Multi-level RoIAlign with the FPN level assignment of torchvision's ``MultiScaleRoIAlign``
    (level ⌊4 + log2(√area / 224)⌋, clamped to the levels given), but with RoIAlign's ``aligned``
    flag following the mask geometry (torchvision's pooler has no such switch).

    With ``geometry="torchvision"`` it returns exactly what ``MultiScaleRoIAlign`` returns.
    """

    CANONICAL_SCALE = 224
    CANONICAL_LEVEL = 4

    def __init__(self, featmap_names: list[str], output_size: int, sampling_ratio: int, geometry: str = "exact"):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = (int(output_size), int(output_size))
        self.sampling_ratio = sampling_ratio
        self.geometry = check_geometry(geometry)

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        maps = [features[name] for name in self.featmap_names]
        scales = [level_scale(f, image_shapes) for f in maps]
        rois = rois_with_batch_index(boxes).to(maps[0].dtype)
        aligned = is_aligned(self.geometry)
        if len(maps) == 1:
            return roi_align(maps[0], rois, self.output_size, scales[0], self.sampling_ratio, aligned)
        k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
        # the same float arithmetic as torchvision's LevelMapper, so levels agree box for box
        sides = torch.sqrt(box_area(torch.cat(boxes)))
        levels = torch.floor(
            self.CANONICAL_LEVEL + torch.log2(sides / self.CANONICAL_SCALE) + torch.tensor(1e-6, dtype=sides.dtype)
        )
        levels = torch.clamp(levels, min=k_min, max=k_max).to(torch.int64) - int(k_min)
        out = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))
        tracing = exporting()  # record every level
        for level, (feature, scale) in enumerate(zip(maps, scales)):
            idx = torch.where(levels == level)[0]
            if tracing:  # index_copy (ScatterND) keeps the RoI count dynamic; out[idx] = ... records a
                # reshape of the traced count, which fails on images where a level gets another count
                pooled = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio, aligned)
                out = out.index_copy(0, idx, pooled.to(out.dtype))
            elif idx.numel():
                out[idx] = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio, aligned).to(
                    out.dtype
                )
        return out


def boxes_to_mask_frame(boxes: Tensor, image_size: tuple[int, int] | None, mask_size) -> Tensor:
    """Boxes (N×4, network-input pixels of an image of ``image_size`` = (h, w)) in the pixel frame
    of masks of ``mask_size`` = (H, W) that cover the same image: x·W/w, y·H/h.

    Both are pixel-edge coordinates of one continuous image, so the map is a pure scale — the
    same ratio torchvision's ``resize_boxes`` applied to the boxes on the way in. Masks of the
    input's own size (or ``image_size=None``) leave the boxes untouched, bit for bit."""
    if image_size is None:
        return boxes
    h, w = int(image_size[0]), int(image_size[1])
    mh, mw = int(mask_size[0]), int(mask_size[1])
    if (mh, mw) == (h, w):
        return boxes
    scale = torch.tensor([mw / w, mh / h, mw / w, mh / h], dtype=boxes.dtype, device=boxes.device)
    return boxes * scale


def roi_mask_targets(
    masks: Tensor, boxes: Tensor, resolution: int, geometry: str = "exact", batch_index: Tensor | None = None
) -> Tensor:
    """Soft mask targets: each mask cropped to its box and resampled to resolution×resolution.

    Args:
        masks: N×H×W ground-truth masks (any numeric dtype), one per box — or, with
            ``batch_index``, G×H×W masks of which box i uses ``masks[batch_index[i]]``.
        boxes: N×4 boxes (x0, y0, x1, y1) in the masks' pixel coordinates.
        resolution: R, the target's side.
        geometry: ``"exact"``: each cell averages the (bilinearly interpolated) mask over that
            cell of the continuous box — RoIAlign ``aligned=True`` with ⌈cell size⌉² samples, so
            every pixel under the cell counts; ``"torchvision"``: Mask R-CNN's legacy targets
            (``aligned=False``, 2×2 samples per cell whatever its size), bit for bit.

    Returns:
        N×R×R float targets in [0, 1], in the boxes' dtype.
    """
    aligned = is_aligned(geometry)
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, resolution, resolution))
    if batch_index is None:
        if masks.shape[0] != boxes.shape[0]:
            raise ValueError(f"{masks.shape[0]} masks but {boxes.shape[0]} boxes")
        batch_index = torch.arange(boxes.shape[0], device=boxes.device)
    rois = torch.cat([batch_index.to(boxes.dtype)[:, None], boxes], dim=1)
    # exact: adaptive sampling (⌈cell size⌉ points per cell and axis); legacy: 2×2 points
    sampling_ratio = 0 if aligned else 2
    return roi_align(
        masks[:, None].to(boxes.dtype),
        rois,
        (resolution, resolution),
        spatial_scale=1.0,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )[:, 0]


#: moved to dynamask.evaluation.round_trip (a measurement, not a model part); the old names still work
__getattr__ = moved_names(__name__, "dynamask.evaluation.round_trip", ("round_trip_masks", "round_trip_iou"))
