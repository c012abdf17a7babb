"""``dynamask evaluate --results``: the metrics of a COCO results file, without a model."""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from ..coco_json import load_coco_json
from ..errors import DynaMaskError
from .coco_eval import compute_coco_metrics
from .report import METRIC_KEYS, write_metrics_json
from .results_file import read_results_file
from .statistics import result_statistics

__all__ = ["evaluate_results"]

logger = logging.getLogger("dynamask.evaluate")


def _image_sizes(res, gt_data: dict, gt_path: str, results_path: str) -> dict[int, tuple[int, int]]:
    """{image id: (h, w)} from the first mask of each image, for gt images without height/width;
    a :class:`DynaMaskError` when such an image has annotations but no detection gives its size."""
    sizes: dict[int, tuple[int, int]] = {}
    rows = np.flatnonzero(res.has_mask)
    ids, first = np.unique(res.image_ids[rows], return_index=True)
    for i, r in zip(ids.tolist(), rows[first].tolist()):
        sizes[i] = (int(res.heights[r]), int(res.widths[r]))
    if rows.size:
        with_anns = {int(a["image_id"]) for a in gt_data["annotations"]}
        for img in gt_data["images"]:
            if (
                (not img.get("height") or not img.get("width"))
                and int(img["id"]) not in sizes
                and int(img["id"]) in with_anns
            ):
                raise DynaMaskError(
                    f"{gt_path}: image {img['id']} has no 'height'/'width' and no detection in "
                    f"{results_path} gives its size; mask AP needs it"
                )
    return sizes


def evaluate_results(
    results: str | os.PathLike,
    gt: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    max_dets: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """The metrics of a COCO results file (e.g. another model's detections, or a
    ``coco_results.json`` that :func:`~dynamask.engine.evaluate.evaluate` wrote) against the
    ground-truth file ``gt``, without a model: the APs of :func:`~.coco_eval.compute_coco_metrics`
    over every gt image (an image without detections counts its gt as missed, as in COCO's
    protocol; ``max_dets`` best per image), and from the entries' own fields the resolution
    histogram and mask GFLOPs (``mask_resolution``, ``mask_flops``; None when no entry has them)
    and the complexity ρ. The keys of the model's run (policy, budget, speed) are None;
    ``results_file`` and ``gt_file`` name the inputs. With ``out_dir``, writes ``metrics.json``
    there. Bad input is a :class:`DynaMaskError` naming the file, the entry and the field
    (:func:`~.results_file.read_results_file`). ``progress``: progress lines while it scores.
    """
    gt_path, results_path = os.fspath(gt), os.fspath(results)
    gt_data = load_coco_json(gt_path)
    res = read_results_file(results_path, gt_data, gt_path)
    sizes = _image_sizes(res, gt_data, gt_path, results_path)
    for field, flags in (("segmentation", res.has_mask), ("bbox", res.has_box)):
        lacking = int(np.count_nonzero(~flags))
        if len(res) and lacking:
            logger.warning(
                "%s: %d of %d entries have no '%s': no %s AP",
                results_path,
                lacking,
                len(res),
                field,
                "mask or boundary" if field == "segmentation" else "box",
            )
    metrics: dict[str, Any] = dict(
        compute_coco_metrics(gt_data, res, max_dets=max_dets, image_sizes=sizes, progress=progress)
    )
    n_img = len(gt_data["images"])
    metrics.update(result_statistics(gt_data, res, n_img))
    if np.isnan(res.mask_flops).all():
        metrics["mask_gflops_per_image"] = None
    metrics.update(
        images_per_second=None,
        num_images=n_img,
        num_detections=len(res),
        policy=None,
        mask_budget=None,
        mask_score_floor=None,
        mask_geometry=None,
        max_dets=int(max_dets),
        score_thresh=None,
        results_file=os.path.abspath(results_path),
        gt_file=os.path.abspath(gt_path),
    )
    metrics = {k: metrics[k] for k in (*METRIC_KEYS, "results_file", "gt_file")}
    if out_dir is not None:
        os.makedirs(os.fspath(out_dir), exist_ok=True)
        write_metrics_json(os.path.join(os.fspath(out_dir), "metrics.json"), metrics)
    return metrics
