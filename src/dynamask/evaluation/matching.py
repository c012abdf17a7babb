"""Matching and accumulation of a few categories in faster-coco-eval's C++ core.

Why a file of its own: this is the one place where the flat arrays become what the C++ core
reads -- a dict per instance in its ``Dataset`` and nested lists of IoU matrices -- so it is fed
a few categories at a time (their detections are dicts only meanwhile), as a task that a worker
process can run (:mod:`.coco_eval`). ``COCOevalEvaluateAccumulate`` is the detectron2
``COCOeval_opt`` algorithm: pycocotools' ``evaluateImg`` and ``accumulate`` in C++.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = ["IOU_THRESHOLDS", "RECALL_THRESHOLDS", "AREA_RANGES", "AREA_LABELS", "max_dets_list", "precision_task"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = ((0.0, 1e5**2), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e5**2))
AREA_LABELS = ("all", "small", "medium", "large")


def max_dets_list(max_dets: int) -> list[int]:
    """pycocotools' ``params.maxDets`` for a run that keeps ``max_dets`` detections an image."""
    return sorted({1, 10, int(max_dets)})


def _params(img_ids: list[int], cat_ids: list[int], max_dets: int) -> SimpleNamespace:
    return SimpleNamespace(
        imgIds=img_ids,
        catIds=cat_ids,
        iouThrs=IOU_THRESHOLDS.tolist(),
        recThrs=RECALL_THRESHOLDS.tolist(),
        maxDets=max_dets_list(max_dets),
        areaRng=[list(a) for a in AREA_RANGES],
        areaRngLbl=list(AREA_LABELS),
        useCats=1,
    )


def precision_task(task: dict[str, Any]) -> tuple[str, int, np.ndarray]:
    """(IoU type, first category's index, pycocotools' ``eval["precision"]`` [T × R × K × A × M]
    of the task's categories). The task holds ``img_ids``, ``cat_ids``, ``max_dets``, the ground
    truth (``gt_image``, ``gt_category``, ``gt_area``, ``gt_crowd``; ids are positions + 1, file
    order within an (image, category)), the detections (``det_image``, ``det_category``,
    ``det_score``, ``det_area``, ``det_id``; score order within an (image, category), at most
    ``max_dets``) and ``ious`` {(image, category): detections × ground truth}."""
    import faster_coco_eval.faster_eval_api_cpp as cpp

    gt_ds, dt_ds = cpp.Dataset(), cpp.Dataset()
    for k, (i, c, area, crowd) in enumerate(
        zip(
            task["gt_image"].tolist(), task["gt_category"].tolist(), task["gt_area"].tolist(), task["gt_crowd"].tolist()
        )
    ):
        gt_ds.append(i, c, {"id": k + 1, "area": area, "iscrowd": crowd, "ignore": crowd})
    for i, c, score, area, ident in zip(
        task["det_image"].tolist(),
        task["det_category"].tolist(),
        task["det_score"].tolist(),
        task["det_area"].tolist(),
        task["det_id"].tolist(),
    ):
        dt_ds.append(i, c, {"id": ident, "score": score, "area": area})
    ious = task["ious"]
    matrices = [[ious.get((i, c), []) for c in task["cat_ids"]] for i in task["img_ids"]]
    result = cpp.COCOevalEvaluateAccumulate(
        _params(task["img_ids"], task["cat_ids"], task["max_dets"]),
        matrices,
        gt_ds,
        dt_ds,
        task["img_ids"],
        task["cat_ids"],
        True,
    )
    return task["kind"], task["first"], np.asarray(result["precision"])
