"""The ground truth of an evaluation as flat arrays, read once for box, mask and boundary AP.

Why: pycocotools builds its own index and per-annotation dicts for every IoU type it scores;
here the evaluated images' annotations become a few arrays (ids, boxes, areas, crowd flags and
the compressed RLE of each mask, rasterised once from its polygons the way pycocotools does).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cocotools import mask_utils
from ..errors import DynaMaskError

__all__ = ["GroundTruth", "ground_truth_arrays"]


@dataclass
class GroundTruth:
    """The evaluated images (sorted ids, sizes), the categories (sorted ids) and the annotations
    of those images and categories in file order, annotation ``k`` with the mask
    ``rle_bytes[rle_offsets[k]:rle_offsets[k + 1]]`` when built with masks."""

    image_ids: np.ndarray  # int64 [I]
    heights: np.ndarray  # int64 [I] (0: unknown)
    widths: np.ndarray  # int64 [I]
    category_ids: np.ndarray  # int64 [K]
    ann_image: np.ndarray  # int64 [G] image id
    ann_category: np.ndarray  # int64 [G]
    ann_area: np.ndarray  # float64 [G] the json ``area`` (pycocotools' area ranges use it)
    ann_crowd: np.ndarray  # bool [G]
    ann_box: np.ndarray  # float64 [G, 4] x, y, w, h
    rle_offsets: np.ndarray | None = None  # int64 [G + 1]
    rle_bytes: np.ndarray | None = None  # uint8

    def __len__(self) -> int:
        return int(self.ann_image.shape[0])

    def counts(self, k: int) -> bytes:
        return self.rle_bytes[int(self.rle_offsets[k]) : int(self.rle_offsets[k + 1])].tobytes()


def _mask_counts(seg: Any, h: int, w: int) -> bytes:
    """The compressed RLE (bytes) of a gt ``segmentation``, as pycocotools' ``annToRLE`` makes it."""
    if seg is None or (isinstance(seg, list) and not seg):
        return mask_utils.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]["counts"]
    if isinstance(seg, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, h, w))["counts"]
    counts = seg["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, h, w)["counts"]
    return counts.encode("ascii") if isinstance(counts, str) else bytes(counts)


def ground_truth_arrays(
    gt: Mapping[str, Any],
    img_ids: Iterable[int] | None = None,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    masks: bool = True,
) -> GroundTruth:
    """:class:`GroundTruth` of the COCO dict ``gt`` over ``img_ids`` (default: all its images).
    An image without ``height``/``width`` takes them from ``image_sizes`` ({id: (h, w)}); masks
    need them. An annotation without ``area`` gets its box's; one without ``iscrowd`` is not a crowd."""
    keep = None if img_ids is None else {int(i) for i in img_ids}
    sizes = {}
    for img in gt.get("images", []):
        i = int(img["id"])
        if keep is not None and i not in keep:
            continue
        h, w = img.get("height"), img.get("width")
        if (not h or not w) and image_sizes and i in image_sizes:
            h, w = image_sizes[i]
        sizes[i] = (int(h or 0), int(w or 0))
    image_ids = np.array(sorted(sizes), np.int64)
    cats = np.array(sorted({int(c["id"]) for c in gt.get("categories", [])}), np.int64)
    cat_set = set(cats.tolist())
    rows, rle = [], []
    for ann in gt.get("annotations", []):
        i, c = int(ann["image_id"]), int(ann["category_id"])
        if i not in sizes or c not in cat_set:
            continue
        box = [float(v) for v in (ann.get("bbox") or (0.0, 0.0, 0.0, 0.0))]
        area = ann.get("area")
        rows.append((i, c, float(box[2] * box[3] if area is None else area), bool(ann.get("iscrowd", 0)), *box))
        if masks:
            h, w = sizes[i]
            if not h or not w:
                raise DynaMaskError(f"ground truth: image {i} has no 'height'/'width'; mask AP needs its size")
            rle.append(_mask_counts(ann.get("segmentation"), h, w))
    table = np.array(rows, np.float64).reshape(-1, 8)
    out = GroundTruth(
        image_ids=image_ids,
        heights=np.array([sizes[i][0] for i in image_ids.tolist()], np.int64),
        widths=np.array([sizes[i][1] for i in image_ids.tolist()], np.int64),
        category_ids=cats,
        ann_image=table[:, 0].astype(np.int64),
        ann_category=table[:, 1].astype(np.int64),
        ann_area=table[:, 2].copy(),
        ann_crowd=table[:, 3] != 0,
        ann_box=table[:, 4:8].copy(),
    )
    if masks:
        out.rle_offsets = np.concatenate(([0], np.cumsum([len(c) for c in rle], dtype=np.int64))).astype(np.int64)
        out.rle_bytes = np.frombuffer(b"".join(rle), np.uint8)
    return out
