"""Detection/segmentation transforms built on ``torchvision.transforms.v2``.

Samples are ``(image, target)`` pairs as produced by
:class:`dynamask.data.coco.CocoInstanceDataset`: the image is a
``tv_tensors.Image``, ``target["boxes"]`` a ``tv_tensors.BoundingBoxes`` and
``target["masks"]`` a ``tv_tensors.Mask``, so geometric transforms move boxes
and masks in step. Plain tensors in the target (``labels``, ``iscrowd``,
``area``) and non-tensors (``image_id``) pass through unchanged, except that
:class:`~torchvision.transforms.v2.SanitizeBoundingBoxes` drops the entries of
removed boxes from ``labels``/``iscrowd``/``area`` (and from the masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["build_transforms", "target_fields_getter", "KeepMaskResolution", "SANITIZED_FIELDS"]

#: Per-instance target fields that are filtered together with the boxes.
SANITIZED_FIELDS: tuple[str, ...] = ("labels", "iscrowd", "area")


def _find_target(inputs: Any) -> dict | None:
    if isinstance(inputs, dict):
        return inputs
    if isinstance(inputs, (tuple, list)):
        for item in inputs:
            if isinstance(item, dict):
                return item
    return None


def target_fields_getter(inputs: Any) -> tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``SanitizeBoundingBoxes``: the per-instance tensors
    (``labels``, ``iscrowd``, ``area`` when present) of the sample's target dict, and the masks
    when :class:`KeepMaskResolution` made them a plain tensor (a ``tv_tensors.Mask`` is filtered
    by torchvision itself)."""
    target = _find_target(inputs)
    if target is None:
        raise ValueError("SanitizeBoundingBoxes: expected an (image, target dict) sample")
    if "labels" not in target:
        raise ValueError("SanitizeBoundingBoxes: the target dict has no 'labels'")
    fields = tuple(target[k] for k in SANITIZED_FIELDS if isinstance(target.get(k), torch.Tensor))
    masks = target.get("masks")
    if isinstance(masks, torch.Tensor) and not isinstance(masks, tv_tensors.Mask):
        fields += (masks,)
    return fields


class KeepMaskResolution(v2.Transform):
    """Takes the masks out of the geometric transforms that follow (a resize): they become a plain
    tensor, which ``transforms.v2`` passes through untouched beside an image, while the image and
    the boxes are resized. Resizing a mask bitmap (nearest) shifts it against its exactly scaled
    box and, when it shrinks, erases thin parts; the mask branch instead samples its targets
    from these full-resolution masks, mapping each RoI back by the size ratio
    (``models.geometry.boxes_to_mask_frame``). Flips before it move the masks as usual (exactly)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = _find_target(sample)
        if target is not None and isinstance(target.get("masks"), tv_tensors.Mask):
            target["masks"] = target["masks"].as_subclass(torch.Tensor)
        return sample


def _choices(min_size: int | Sequence[int]) -> list:
    sizes = [int(min_size)] if isinstance(min_size, (int, float)) else [int(s) for s in min_size]
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"min_size must be a positive int or a non-empty sequence of them, got {min_size!r}")
    return sizes


def build_transforms(
    train: bool,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = 1333,
    flip_prob: float = 0.5,
    color_jitter: bool = True,
    min_box_size: float = 1.0,
    resize_masks: bool = False,
) -> v2.Compose:
    """Build the sample transform for training or evaluation.

    Train: ``RandomHorizontalFlip(flip_prob)`` -> ``ColorJitter`` (brightness,
    contrast, saturation 0.2, hue 0.02; if ``color_jitter``) -> resize so the
    shorter side is ``min_size`` (an int, or a sequence of choices picked at
    random per sample) with the longer side capped at ``max_size`` -> clamp
    boxes to the image -> ``SanitizeBoundingBoxes`` (drops boxes smaller than
    ``min_box_size`` together with their masks/labels/iscrowd/area).

    Eval: no flip, no jitter; resized only when ``min_size`` is given (to the
    largest choice, deterministically), as torchvision's
    ``GeneralizedRCNNTransform`` resizes inside the model anyway.

    ``min_size=None`` (default) skips resizing in both modes.

    ``resize_masks=False`` (default; ``model.mask_targets="original"``): in training the masks keep
    their original resolution (:class:`KeepMaskResolution`) — flipped with the image, filtered
    with their boxes, never resized; the model maps each RoI back onto them. ``True``: masks are
    resized with the image as bitmaps (nearest), torchvision's way (``mask_targets="resized"``
    and the legacy ``"torchvision"`` geometry).
    """
    ops = []
    if train:
        if flip_prob > 0:
            ops.append(v2.RandomHorizontalFlip(p=flip_prob))
        if color_jitter:
            ops.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
        if not resize_masks:
            ops.append(KeepMaskResolution())
        if min_size is not None:
            ops.append(v2.RandomShortestSize(min_size=_choices(min_size), max_size=max_size, antialias=True))
        ops.append(v2.ClampBoundingBoxes())
        ops.append(v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=target_fields_getter))
    else:
        if min_size is not None:
            ops.append(v2.RandomShortestSize(min_size=[max(_choices(min_size))], max_size=max_size, antialias=True))
            ops.append(v2.ClampBoundingBoxes())
    if not ops:
        ops.append(v2.Identity())
    return v2.Compose(ops)
