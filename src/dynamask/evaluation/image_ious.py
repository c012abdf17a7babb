"""The IoU matrices of one image's detections and ground truth, per category, for each IoU type.

Why a file of its own: this is the work that scales with the result set (RLE intersections, the
boundary bands), and it runs in worker processes over chunks of images (:mod:`.coco_eval`); a
task carries only its images' rows, so a worker never holds the whole result set.

A task is a dict of arrays for a chunk of images: detections sorted by (image, category, score
descending, file order) and cut to ``max_dets`` per (image, category) as pycocotools' evaluator
cuts them, the ground truth in file order, and the compressed RLEs of both as lists of bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..cocotools import mask_utils
from .boundary import BandCache, boundary_ious

__all__ = ["image_ious", "chunk_ious"]

#: pycocotools' ``area`` of a list fails beyond 255 RLEs (a uint8 length under NumPy 2)
_AREA_CHUNK = 255


def _rles(counts: Sequence[bytes], h: int, w: int) -> list[dict]:
    return [{"size": [h, w], "counts": c} for c in counts]


def _mask_areas(rles: list[dict]) -> np.ndarray:
    if not rles:
        return np.zeros(0, np.float64)
    return np.concatenate(
        [np.asarray(mask_utils.area(rles[i : i + _AREA_CHUNK]), np.float64) for i in range(0, len(rles), _AREA_CHUNK)]
    )


def _all_pairs(d: Any, g: Any, crowd: np.ndarray, nd: int, ng: int) -> np.ndarray:
    if nd == 0 or ng == 0:
        return np.zeros((nd, ng), np.float64)
    return np.asarray(mask_utils.iou(d, g, crowd.astype(np.uint8).tolist()), np.float64).reshape(nd, ng)


def image_ious(
    det: dict[str, Any], gt: dict[str, Any], kinds: Sequence[str], size: tuple[int, int], ratio: float
) -> tuple[np.ndarray, dict[int, dict[str, np.ndarray]]]:
    """(the detections' mask areas (empty without masks), {category: {kind: IoU matrix}}) of one
    image; ``det``/``gt`` hold ``category``, ``box``, ``counts`` (and gt ``crowd``) of its rows,
    detections grouped by category. A matrix is detections (in their order) × ground truth (in
    file order) of that category, for categories with both."""
    h, w = size
    nd, ng = len(det["category"]), len(gt["category"])
    crowd = gt["crowd"]
    masks = "segm" in kinds or "boundary" in kinds
    d_rles = _rles(det["counts"], h, w) if masks else []
    g_rles = _rles(gt["counts"], h, w) if masks else []
    areas = _mask_areas(d_rles) if masks else np.zeros(0)
    out: dict[int, dict[str, np.ndarray]] = {}
    if nd == 0 or ng == 0:
        return areas, out
    full = {}
    if "bbox" in kinds:
        full["bbox"] = _all_pairs(det["box"], gt["box"], crowd, nd, ng)
    if masks:
        full["segm"] = _all_pairs(d_rles, g_rles, crowd, nd, ng)
    bands = None
    if "boundary" in kinds:
        boxes = {
            "d": np.asarray(mask_utils.toBbox(d_rles)).astype(np.int64).reshape(-1, 4),
            "g": np.asarray(mask_utils.toBbox(g_rles)).astype(np.int64).reshape(-1, 4),
        }
        counts = {"d": det["counts"], "g": gt["counts"]}
        bands = BandCache(h, w, ratio, lambda key: (counts[key[0]][key[1]], tuple(boxes[key[0]][key[1]].tolist())))
        need = (full["segm"] > 0) & (det["category"][:, None] == gt["category"][None, :]) & ~crowd[None, :]
        rows, cols = np.nonzero(need)  # every band this image needs, read together
        bands.prepare([("d", r) for r in np.unique(rows).tolist()] + [("g", c) for c in np.unique(cols).tolist()])
    d_cat, g_cat = det["category"], gt["category"]
    for c in np.intersect1d(d_cat, g_cat).tolist():
        rows = np.flatnonzero(d_cat == c)
        cols = np.flatnonzero(g_cat == c)
        block = {k: m[rows[0] : rows[-1] + 1][:, cols] for k, m in full.items()}
        if bands is not None:
            block["boundary"] = boundary_ious(
                block["segm"], crowd[cols], [("d", r) for r in rows.tolist()], [("g", k) for k in cols.tolist()], bands
            )
        if "segm" not in kinds:
            block.pop("segm", None)
        out[c] = block
    return areas, out


def chunk_ious(task: dict[str, Any]) -> tuple[np.ndarray, list[dict[int, dict[str, np.ndarray]]]]:
    """:func:`image_ious` of each image of a task (see the module's docstring): (the mask areas
    of all its detections, one {category: {kind: matrix}} per image)."""
    areas, per_image = [], []
    d_lo, g_lo = task["det_offsets"], task["gt_offsets"]
    for j in range(len(task["sizes"])):
        ds, gs = slice(int(d_lo[j]), int(d_lo[j + 1])), slice(int(g_lo[j]), int(g_lo[j + 1]))
        det = {"category": task["det_category"][ds], "box": task["det_box"][ds], "counts": task["det_counts"][ds]}
        gt = {
            "category": task["gt_category"][gs],
            "box": task["gt_box"][gs],
            "crowd": task["gt_crowd"][gs],
            "counts": task["gt_counts"][gs],
        }
        a, ious = image_ious(det, gt, task["kinds"], tuple(task["sizes"][j]), task["ratio"])
        areas.append(a)
        per_image.append(ious)
    return (np.concatenate(areas) if areas else np.zeros(0)), per_image
