"""A model's detections as COCO results entries (the lines of ``coco_results.json``).

One image's output -- boxes, labels, scores, soft masks and the DynaMask fields ``mask_resolution``
and ``mask_flops`` -- becomes the list of dicts pycocotools and :mod:`dynamask.evaluation` score:
kept by score, labels mapped to COCO category ids, masks binarised at 0.5 and run-length encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..cocotools import mask_utils

__all__ = ["masks_to_rles", "predictions_to_coco_results"]

logger = logging.getLogger("dynamask.evaluate")


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """Boolean/0-1 masks N×H×W → compressed COCO RLEs with ``counts`` as ``str``."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be N×H×W, got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(fortran)
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return rles


def predictions_to_coco_results(
    prediction: Mapping[str, Any],
    image_id: int,
    cat_ids: Sequence[int],
    score_thresh: float = 0.0,
    max_dets: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[dict]:
    """One image's model output → COCO results entries.

    Keeps detections with ``score >= score_thresh``, the ``max_dets`` best. Each entry has
    ``image_id``, ``category_id`` (``cat_ids[label - 1]``), ``bbox`` [x, y, w, h], ``score``,
    ``segmentation`` (compressed RLE of ``mask > 0.5``, ``counts`` a str), ``mask_resolution`` and
    ``mask_flops`` (when the prediction has them), plus the ``extra`` fields. Labels outside
    1..len(cat_ids) are dropped with a warning.
    """
    scores = prediction["scores"].detach().float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)
    order = order[scores[order] >= score_thresh]
    if max_dets is not None:
        order = order[:max_dets]
    if order.numel() == 0:
        return []
    boxes = prediction["boxes"].detach().float().cpu()[order]
    labels = prediction["labels"].detach().cpu()[order].tolist()
    sc = scores[order].tolist()
    masks = prediction.get("masks")
    rles: list[dict | None]
    if masks is not None:
        m = masks.detach().cpu()[order]
        m = m.reshape(m.shape[0], m.shape[-2], m.shape[-1]) > 0.5
        rles = masks_to_rles(m.numpy())
    else:
        rles = [None] * len(sc)
    res = prediction.get("mask_resolution")
    res = res.detach().cpu()[order].tolist() if res is not None else [None] * len(sc)
    fl = prediction.get("mask_flops")
    fl = fl.detach().double().cpu()[order].tolist() if fl is not None else [None] * len(sc)

    out = []
    bad = 0
    for k in range(len(sc)):
        label = int(labels[k])
        if not 1 <= label <= len(cat_ids):
            bad += 1
            continue
        x1, y1, x2, y2 = (float(v) for v in boxes[k].tolist())
        entry = {
            "image_id": int(image_id),
            "category_id": int(cat_ids[label - 1]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(sc[k]), 5),
        }
        if rles[k] is not None:
            entry["segmentation"] = rles[k]
        if res[k] is not None:
            entry["mask_resolution"] = int(res[k])
        if fl[k] is not None:
            entry["mask_flops"] = float(fl[k])
        if extra:
            entry.update(extra)
        out.append(entry)
    if bad:
        logger.warning("image %s: dropped %d detection(s) with a label outside 1..%d", image_id, bad, len(cat_ids))
    return out
