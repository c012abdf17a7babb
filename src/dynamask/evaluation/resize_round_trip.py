"""How much of the ground truth survives the *training pipeline's* resize — model-free.

:mod:`dynamask.evaluation.yardstick` measures what a mask grid of R×R keeps of an object when nothing
is resized. Real data is resized on its way into the network (COCO's 640×480 up to 800×1066, large
photos down), twice: by the dataset transform and by the model's own transform. This module runs
one image and its masks through both — exactly as training does — takes the mask targets the
model would train on (the ground-truth boxes as RoIs), pastes them back onto the *original* image
with the original boxes and scores them against the original masks.

With ``mask_targets="original"`` the masks are never resized: each RoI is mapped back onto them,
so the round trip equals the native one (no resize) up to rounding. With ``"resized"``
(torchvision's way: mask bitmaps resized with the image, nearest) the masks shift against their
exactly scaled boxes and, when shrunk, lose their thin parts — at every R, which is what made finer
masks pointless on resized real data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["pipeline_round_trip_iou", "native_round_trip_iou"]


def _iou(pasted: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    inter = (pasted & gt).flatten(1).sum(1).double()
    union = (pasted | gt).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).numpy()


def native_round_trip_iou(
    masks: torch.Tensor, boxes: torch.Tensor, resolutions: Sequence[int] = (28, 56, 112), geometry: str = "exact"
) -> dict[int, np.ndarray]:
    """Per resolution, the per-instance round-trip IoU with no resize at all (the ceiling)."""
    from .round_trip import round_trip_iou

    return {int(r): round_trip_iou(masks, boxes.double(), int(r), geometry).numpy() for r in resolutions}


def pipeline_round_trip_iou(
    image: torch.Tensor,
    masks: torch.Tensor,
    boxes: torch.Tensor,
    *,
    min_size: int | Sequence[int],
    max_size: int,
    mask_targets: str = "original",
    flip: bool = False,
    resolutions: Sequence[int] = (28, 56, 112),
    geometry: str = "exact",
) -> tuple[dict[int, np.ndarray], torch.Tensor]:
    """Round trip of ground-truth masks through the training pipeline.

    Args:
        image: 3×H×W uint8 (or float) image; only its size matters to the masks.
        masks: N×H×W ground-truth masks at the image's resolution.
        boxes: N×4 boxes (x0, y0, x1, y1, pixel edges) of the masks in the image.
        min_size: the resize of ``input.min_size``, applied by the dataset transform and again by
            the model's transform, as in training.
        max_size: the resize of ``input.max_size``, applied the same way.
        mask_targets: ``"original"`` or ``"resized"`` (``model.mask_targets``).
        flip: horizontally flip the sample (the dataset transform's flip with probability 1).
        resolutions: target resolutions R.
        geometry: the mask geometry (``"exact"`` or ``"torchvision"``).

    Returns:
        ({R: per-instance IoU of the original mask with its target pasted back}, indices of the
        instances kept: the pipeline drops boxes that become smaller than a pixel).
    """
    from torchvision import tv_tensors

    from ..data.transforms import build_transforms
    from ..models.geometry import boxes_to_mask_frame
    from ..models.losses import matched_mask_targets
    from ..models.paste import paste_masks
    from ..models.roi_heads import BatchedPasteTransform

    h, w = image.shape[-2:]
    n = masks.shape[0]
    resize_masks = mask_targets == "resized" or geometry == "torchvision"
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(h, w)),
        "masks": tv_tensors.Mask(masks.to(torch.uint8)),
        "labels": torch.arange(n, dtype=torch.int64),  # identities, to follow what the pipeline keeps
    }
    sample = build_transforms(
        True,
        min_size=min_size,
        max_size=max_size,
        flip_prob=1.0 if flip else 0.0,
        color_jitter=False,
        resize_masks=resize_masks,
    )(tv_tensors.Image(image), target)
    img, tgt = (
        sample[0].as_subclass(torch.Tensor),
        {k: v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for k, v in sample[1].items()},
    )
    sizes = [min_size] if isinstance(min_size, int) else list(min_size)
    model_transform = BatchedPasteTransform(sizes, max_size, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    model_transform.mask_geometry = geometry
    model_transform.resize_masks = resize_masks
    model_transform.train()
    images, targets = model_transform([img.float() / 255.0], [tgt])
    t = targets[0]
    input_size = tuple(images.image_sizes[0])
    kept = t["labels"]
    index = torch.arange(kept.numel())
    # the exact boxes of the pipeline's RoIs on the original image (pixel edges scale exactly);
    # a flip is undone on the pasted masks
    original_frame = boxes_to_mask_frame(t["boxes"].double(), input_size, (h, w))
    gt = masks[kept].bool()
    out = {}
    for r in resolutions:
        targets_r = matched_mask_targets([t["masks"]], [t["boxes"].double()], [index], int(r), geometry, [input_size])
        pasted = paste_masks(targets_r[:, None], original_frame, (h, w), geometry=geometry)[:, 0] >= 0.5
        if flip:
            pasted = pasted.flip(-1)
        out[int(r)] = _iou(pasted, gt)
    return out, kept
