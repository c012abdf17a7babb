"""The model-free "yardstick" of a mask dataset: how much of its ground truth survives a mask grid.

For every instance the ground-truth mask is cropped to its box at R×R (the mask targets a head of
resolution R is trained on) and pasted back into the image, both binarised at 0.5
(:func:`dynamask.evaluation.round_trip.round_trip_masks`): the best mask any head of that resolution
can deliver.
:func:`yardstick` reports, per resolution, the mean over all instances of

* the round-trip **mask IoU**, and
* the round-trip **boundary IoU** (Cheng et al., "Boundary IoU", CVPR 2021): the IoU of the two
  masks' boundary bands, the mask pixels within ``d`` pixels of the contour, with ``d`` = 2 % of
  the image diagonal (at least 1 px) — the same definition as the boundary AP of
  :mod:`dynamask.engine.evaluate`,

and keeps the per-instance values (with category ids when known) so that callers can split the
instances, e.g. simple against detailed outlines. On real photographs (VOC people, chairs,
bottles) the mean mask IoU is about 0.83 at 28, 0.95 at 56 and 1.00 at 112; the eight simple
shapes give about 0.99 already at 28. :func:`yardstick_from_coco` computes it from a COCO-format
annotation file (the images are not needed).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = ["Yardstick", "boundary_dilation", "boundary_iou", "mask_boundary", "yardstick", "yardstick_from_coco"]

DEFAULT_RESOLUTIONS: tuple[int, ...] = (14, 28, 56, 112)


def boundary_dilation(h: int, w: int, dilation_ratio: float) -> int:
    """Boundary band width in pixels: the ratio times the image diagonal, at least 1."""
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """The boundary band of a binary H×W mask: its pixels within ``dilation`` pixels of the
    contour (the mask minus its erosion by a 3×3 square ``dilation`` times; the image border
    counts as contour), as in the Boundary IoU reference code. Returns a uint8 mask."""
    m = (np.asarray(mask) > 0).astype(np.uint8)
    h, w = m.shape
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=int(dilation))[1 : h + 1, 1 : w + 1]
    return m - eroded


def boundary_iou(gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02) -> float:
    """Boundary IoU of two binary H×W masks, band width ``dilation_ratio`` × image diagonal
    (at least 1 px). 1.0 when both masks are empty."""
    gt = np.asarray(gt)
    d = boundary_dilation(gt.shape[0], gt.shape[1], dilation_ratio)
    bg, bp = mask_boundary(gt, d).astype(bool), mask_boundary(pred, d).astype(bool)
    union = int(np.count_nonzero(bg | bp))
    return 1.0 if union == 0 else int(np.count_nonzero(bg & bp)) / union


@dataclass
class Yardstick:
    """Round-trip mask and boundary IoU per instance and resolution.

    ``mask_iou[R]`` / ``boundary_iou[R]``: float64 arrays, one value per instance (instances in
    image order, then in the order given). ``image_index``: the position of each instance's image
    in the input; ``labels``: category ids, or None when unknown.
    """

    resolutions: tuple[int, ...]
    geometry: str
    mask_iou: dict[int, np.ndarray]
    boundary_iou: dict[int, np.ndarray]
    image_index: np.ndarray
    labels: np.ndarray | None = None
    category_names: dict[int, str] = field(default_factory=dict)

    @property
    def num_instances(self) -> int:
        return int(self.image_index.shape[0])

    def subset(self, keep: np.ndarray | Sequence[bool] | Sequence[int]) -> Yardstick:
        """The instances selected by a boolean mask or by indices."""
        keep = np.asarray(keep)
        if keep.dtype != bool:
            keep = np.isin(np.arange(self.num_instances), keep)
        return Yardstick(
            self.resolutions,
            self.geometry,
            {r: v[keep] for r, v in self.mask_iou.items()},
            {r: v[keep] for r, v in self.boundary_iou.items()},
            self.image_index[keep],
            None if self.labels is None else self.labels[keep],
            dict(self.category_names),
        )

    def of_categories(self, category_ids: Iterable[int]) -> Yardstick:
        """The instances of these categories (needs ``labels``)."""
        if self.labels is None:
            raise ValueError("this yardstick has no category labels")
        return self.subset(np.isin(self.labels, np.asarray(list(category_ids), dtype=np.int64)))

    def mean_mask_iou(self) -> dict[int, float]:
        """{resolution: mean round-trip mask IoU} (NaN with no instances)."""
        return {r: float(v.mean()) if v.size else float("nan") for r, v in self.mask_iou.items()}

    def mean_boundary_iou(self) -> dict[int, float]:
        """{resolution: mean round-trip boundary IoU} (NaN with no instances)."""
        return {r: float(v.mean()) if v.size else float("nan") for r, v in self.boundary_iou.items()}

    def summary(self) -> dict:
        """JSON-ready means: ``{"geometry", "num_instances", "mask_iou": {R: mean},
        "boundary_iou": {R: mean}}`` (resolutions as int keys)."""
        return {
            "geometry": self.geometry,
            "num_instances": self.num_instances,
            "mask_iou": self.mean_mask_iou(),
            "boundary_iou": self.mean_boundary_iou(),
        }

    def per_category(self) -> dict[int, dict]:
        """{category id: :meth:`summary` of its instances} (needs ``labels``)."""
        if self.labels is None:
            raise ValueError("this yardstick has no category labels")
        return {int(c): self.of_categories([int(c)]).summary() for c in np.unique(self.labels)}

    def format(self, digits: int = 2) -> str:
        """``round-trip mask IoU at 14/28/56/112: a / b / c / d; boundary IoU: ...``."""
        res = "/".join(str(r) for r in self.resolutions)
        m, b = self.mean_mask_iou(), self.mean_boundary_iou()
        fm = " / ".join(f"{m[r]:.{digits}f}" for r in self.resolutions)
        fb = " / ".join(f"{b[r]:.{digits}f}" for r in self.resolutions)
        return f"round-trip mask IoU at {res}: {fm}; boundary IoU: {fb}"


def _as_numpy_masks(masks) -> np.ndarray:
    if hasattr(masks, "detach"):  # torch tensor
        masks = masks.detach().cpu().numpy()
    m = np.asarray(masks)
    if m.ndim != 3:
        raise ValueError(f"masks must be N x H x W, got shape {m.shape}")
    return m > 0


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float64)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if xs.size:
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def yardstick(
    masks_by_image: Sequence,
    boxes_by_image: Sequence | None = None,
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    geometry: str = "exact",
    labels_by_image: Sequence | None = None,
    dilation_ratio: float = 0.02,
    category_names: dict[int, str] | None = None,
) -> Yardstick:
    """Round-trip mask IoU and boundary IoU of ground-truth masks at each resolution.

    Args:
        masks_by_image: per image, an N×H×W mask array or tensor (any dtype, > 0 is foreground).
        boxes_by_image: per image, N×4 boxes (x0, y0, x1, y1) in pixel-edge coordinates (COCO
            ``bbox`` x, y, w, h → x, y, x + w, y + h); None: the masks' tight boxes.
        resolutions: the mask grids R (R×R) to measure.
        geometry: ``"exact"`` or ``"torchvision"`` (see :mod:`dynamask.models.geometry`).
        labels_by_image: optional per-image category ids (length N each), kept per instance.
        dilation_ratio: the boundary band as a fraction of the image diagonal (Boundary IoU: 0.02).
        category_names: optional {id: name}, kept for display.

    Returns:
        A :class:`Yardstick` (per-instance values and means).
    """
    from ..models.geometry import check_geometry

    check_geometry(geometry)
    resolutions = tuple(int(r) for r in resolutions)
    _check_inputs(masks_by_image, boxes_by_image, labels_by_image, resolutions)

    mask_iou: dict[int, list[np.ndarray]] = {r: [] for r in resolutions}
    bnd_iou: dict[int, list[np.ndarray]] = {r: [] for r in resolutions}
    image_index: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for i, masks in enumerate(masks_by_image):
        m = _as_numpy_masks(masks)
        n = m.shape[0]
        boxes = _tight_boxes(m) if boxes_by_image is None else _image_boxes(boxes_by_image[i], i, n)
        if labels_by_image is not None:
            labels.append(_image_labels(labels_by_image[i], i, n))
        image_index.append(np.full(n, i, dtype=np.int64))
        if n == 0:
            continue
        ious = _round_trip_ious(m, boxes, resolutions, geometry, dilation_ratio)
        for r, (image_mask_iou, image_bnd_iou) in ious.items():
            mask_iou[r].append(image_mask_iou)
            bnd_iou[r].append(image_bnd_iou)

    return Yardstick(
        resolutions=resolutions,
        geometry=geometry,
        mask_iou={r: _concat(v, np.float64) for r, v in mask_iou.items()},
        boundary_iou={r: _concat(v, np.float64) for r, v in bnd_iou.items()},
        image_index=_concat(image_index, np.int64),
        labels=_concat(labels, np.int64) if labels_by_image is not None else None,
        category_names=dict(category_names or {}),
    )


def _check_inputs(masks_by_image, boxes_by_image, labels_by_image, resolutions: tuple[int, ...]) -> None:
    """Positive resolutions, and as many images of boxes and labels (when given) as of masks."""
    if not resolutions or min(resolutions) < 1:
        raise ValueError(f"resolutions must be positive integers, got {resolutions}")
    if boxes_by_image is not None and len(boxes_by_image) != len(masks_by_image):
        raise ValueError(f"{len(masks_by_image)} images of masks but {len(boxes_by_image)} of boxes")
    if labels_by_image is not None and len(labels_by_image) != len(masks_by_image):
        raise ValueError(f"{len(masks_by_image)} images of masks but {len(labels_by_image)} of labels")


def _image_boxes(b, i: int, n: int) -> np.ndarray:
    """Image ``i``'s given boxes as float64 N×4, one per mask."""
    boxes = np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, dtype=np.float64)
    boxes = boxes.reshape(-1, 4)
    if boxes.shape[0] != n:
        raise ValueError(f"image {i}: {n} masks but {boxes.shape[0]} boxes")
    return boxes


def _image_labels(lab, i: int, n: int) -> np.ndarray:
    """Image ``i``'s category ids as int64, one per mask."""
    lab = np.asarray(lab.detach().cpu().numpy() if hasattr(lab, "detach") else lab, dtype=np.int64).reshape(-1)
    if lab.shape[0] != n:
        raise ValueError(f"image {i}: {n} masks but {lab.shape[0]} labels")
    return lab


def _round_trip_ious(
    m: np.ndarray, boxes: np.ndarray, resolutions: tuple[int, ...], geometry: str, dilation_ratio: float
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One image's N ground-truth masks (bool N×H×W, N > 0) through each R×R grid and back:
    {R: (mask IoU, boundary IoU)}, float64 arrays of N values."""
    import torch

    from .round_trip import round_trip_masks

    n, h, w = m.shape
    gt_t = torch.from_numpy(m.astype(np.uint8))
    boxes_t = torch.from_numpy(boxes.astype(np.float32))
    d = boundary_dilation(h, w, dilation_ratio)
    gt_bands = [mask_boundary(g, d).astype(bool) for g in m]
    out = {}
    for r in resolutions:
        with torch.no_grad():
            pasted = round_trip_masks(gt_t, boxes_t, r, geometry).numpy()
        inter = np.count_nonzero(pasted & m, axis=(1, 2))
        union = np.count_nonzero(pasted | m, axis=(1, 2))
        mask_iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)
        vals = np.empty(n, dtype=np.float64)
        for k in range(n):
            bp = mask_boundary(pasted[k], d).astype(bool)
            union = int(np.count_nonzero(gt_bands[k] | bp))
            vals[k] = 1.0 if union == 0 else int(np.count_nonzero(gt_bands[k] & bp)) / union
        out[r] = (mask_iou, vals)
    return out


def _concat(parts: list[np.ndarray], dtype) -> np.ndarray:
    """The per-image arrays as one, in image order (empty with no parts)."""
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def yardstick_from_coco(
    annotations: str | os.PathLike | dict,
    resolutions: Sequence[int] = DEFAULT_RESOLUTIONS,
    geometry: str = "exact",
    max_images: int | None = None,
    dilation_ratio: float = 0.02,
    include_crowd: bool = False,
) -> Yardstick:
    """:func:`yardstick` of a COCO-format annotation file (``val.json``) or dict; images are not
    read. Masks come from pycocotools' ``annToMask``, boxes from each annotation's ``bbox``
    (x, y, w, h → x, y, x + w, y + h), labels are the category ids. Images in id order (the
    first ``max_images`` of them); crowd annotations are skipped unless ``include_crowd``."""
    from pycocotools.coco import COCO

    coco = COCO()
    if isinstance(annotations, dict):
        coco.dataset = annotations
    else:
        import json

        with open(annotations, encoding="utf-8") as f:
            coco.dataset = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    img_ids = sorted(coco.getImgIds())
    if max_images is not None:
        img_ids = img_ids[: int(max_images)]
    masks, boxes, labels = [], [], []
    for img_id in img_ids:
        info = coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        anns = [a for a in coco.imgToAnns.get(img_id, []) if include_crowd or not a.get("iscrowd", 0)]
        if anns:
            masks.append(np.stack([coco.annToMask(a) for a in anns]))
        else:
            masks.append(np.zeros((0, h, w), dtype=np.uint8))
        boxes.append(
            np.array(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                dtype=np.float64,
            ).reshape(-1, 4)
        )
        labels.append(np.array([a["category_id"] for a in anns], dtype=np.int64))
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco.dataset.get("categories", [])}
    return yardstick(masks, boxes, resolutions, geometry, labels, dilation_ratio, names)
