"""The two steps every evaluation takes after :func:`~dynamask.engine.eval_job.prepare_job`: the
model's pass over the images, and the scoring of what it found.

:func:`run_model` runs the model under a policy and budget in eval mode (its settings and mode
restored after) and returns its COCO results with the image ids and sizes and the forward seconds;
:func:`measure_and_write` scores such a run (:func:`~dynamask.evaluation.coco_eval.compute_coco_metrics`
and :func:`~dynamask.evaluation.statistics.result_statistics`) and writes ``coco_results.json`` and
``metrics.json``. In a sharded evaluation every process runs the first and rank 0 alone the second.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from ..evaluation.coco_eval import compute_coco_metrics
from ..evaluation.report import METRIC_KEYS, write_json_atomic, write_metrics_json
from ..evaluation.statistics import result_statistics
from ..inference import apply_policy
from ..progress import progress_bar
from .coco_results import predictions_to_coco_results
from .eval_job import job_loader

__all__ = ["run_model", "run_job_images", "measure_and_write"]

logger = logging.getLogger("dynamask.evaluate")


def run_job_images(job: dict[str, Any], indices: list[int], policy, budget, progress: bool) -> dict[str, Any]:
    """:func:`run_model` on the job's images at ``indices``, with the job's model, device and
    detection settings."""
    return run_model(
        job["model"],
        job_loader(job, indices),
        job["dev"],
        policy,
        budget,
        job["cat_ids"],
        job["score_thresh"],
        job["max_dets"],
        len(indices),
        progress,
    )


def run_model(
    model, loader, dev, policy, budget, cat_ids, score_thresh: float, max_dets: int, total: int, progress: bool
) -> dict[str, Any]:
    """Run the model under ``policy``/``budget`` in eval mode, then restore its settings and mode.
    Returns the COCO results, image ids and sizes, the forward seconds and the settings used."""
    prev_policy, prev_budget, was_training = model.policy, model.mask_budget, model.training
    model.to(dev)
    results: list[dict] = []
    image_ids: list[int] = []
    image_sizes: dict[int, tuple[int, int]] = {}
    counts: list[int] = []  # detections per image
    forward_s = 0.0
    try:
        apply_policy(model, policy, budget)
        used_policy, used_budget = model.policy, float(model.mask_budget)
        model.eval()
        bar = progress_bar(total, "evaluate", unit="img", enabled=progress)
        with torch.inference_mode():
            for images, targets in loader:
                images = [torch.as_tensor(im).as_subclass(torch.Tensor).to(dev, non_blocking=True) for im in images]
                _sync(dev)
                t0 = time.perf_counter()
                outputs = model(images)
                _sync(dev)
                forward_s += time.perf_counter() - t0
                for im, tgt, out in zip(images, targets, outputs):
                    image_id = int(tgt["image_id"])
                    image_ids.append(image_id)
                    image_sizes[image_id] = (int(im.shape[-2]), int(im.shape[-1]))
                    entries = predictions_to_coco_results(out, image_id, cat_ids, score_thresh, max_dets)
                    counts.append(len(entries))
                    results.extend(entries)
                bar.update(len(images))
        bar.close()
    finally:
        model.train(was_training)
        try:
            model.policy = prev_policy
            model.mask_budget = prev_budget
        except ValueError:  # pragma: no cover - restoring a value it had
            pass
    return {
        "results": results,
        "image_ids": image_ids,
        "image_sizes": image_sizes,
        "counts": counts,
        "forward_s": forward_s,
        "policy": used_policy,
        "budget": used_budget,
    }


def measure_and_write(
    job: dict[str, Any], run: dict[str, Any], out_dir, processes: int = 1, progress: bool = False
) -> dict[str, Any]:
    """Score ``run`` against the job's ground truth; with ``out_dir``, write ``coco_results.json``
    (before scoring) and ``metrics.json``. ``processes`` > 1 (a sharded run) adds ``eval_processes``."""
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "coco_results.json"), run["results"])
    dataset = job["dataset"]
    metrics = _metrics(dataset.coco.dataset, run, job["model"], job["max_dets"], job["score_thresh"], progress)
    if hasattr(dataset, "release_ground_truth"):  # not kept alive for the next fork of the training workers
        dataset.release_ground_truth()
    if processes > 1:
        metrics["eval_processes"] = processes
    if out_dir is not None:
        write_metrics_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def _metrics(
    gt: dict, run: dict[str, Any], model, max_dets: int, score_thresh: float, progress: bool = False
) -> dict[str, Any]:
    """COCO APs (bbox, segm, boundary), mask cost, resolution histogram and the complexity ρ."""
    results, image_ids = run["results"], run["image_ids"]
    started = time.perf_counter()  # a line before and after in the log (training's too, without progress lines)
    logger.info("scoring %d detection(s) on %d image(s): bbox, segm and boundary AP", len(results), len(image_ids))
    metrics: dict[str, Any] = dict(
        compute_coco_metrics(
            gt, results, max_dets=max_dets, img_ids=image_ids, image_sizes=run["image_sizes"], progress=progress
        )
    )
    logger.info("scored in %.1f s", time.perf_counter() - started)
    n_img, n_det = len(image_ids), len(results)
    metrics.update(result_statistics(gt, results, n_img))
    metrics.update(
        images_per_second=(n_img / run["forward_s"]) if run["forward_s"] > 0 else None,
        num_images=n_img,
        num_detections=n_det,
        policy=run["policy"],
        mask_budget=run["budget"],
        mask_score_floor=float(getattr(model, "mask_score_floor", 0.0)),
        mask_geometry=getattr(model, "mask_geometry", None),
        max_dets=max_dets,
        score_thresh=score_thresh,
    )
    return {k: metrics[k] for k in METRIC_KEYS}


def _sync(device: torch.device) -> None:
    """Wait for the GPU, so that the forward seconds count the forward pass and nothing else."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
