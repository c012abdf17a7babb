"""COCO evaluation of a dynamask model: the model loop over a validation set, single or sharded.

:func:`evaluate` runs a model over a COCO-format validation set and returns (and, with
``out_dir``, writes) a metrics dict. Its steps live in modules of their own: preparing the job
(model, data, category ids, images, device: :mod:`~dynamask.engine.eval_job`), the model's pass
and the scoring (:mod:`~dynamask.engine.eval_pass`), detections as COCO results
(:mod:`~dynamask.engine.coco_results`) and the multi-process loop
(:mod:`~dynamask.engine.sharded_evaluate`). Scoring the detections is :mod:`dynamask.evaluation`'s
(:func:`~dynamask.evaluation.coco_eval.compute_coco_metrics`: box, mask and boundary AP, exact to
pycocotools, on flat arrays and every core; the switch statistics of
:mod:`dynamask.evaluation.statistics`); its public names, and those of
:mod:`~dynamask.engine.coco_results`, are re-exported here so that existing imports keep working.
All AP values are on the **0–100** scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..evaluation.coco_eval import AP_KEYS, compute_coco_metrics
from ..evaluation.report import METRIC_KEYS, format_metrics_table, write_json_atomic, write_metrics_json
from ..evaluation.results_file import load_results_file, read_results_file
from ..evaluation.score_file import evaluate_results
from ..evaluation.statistics import (
    RESOLUTIONS,
    SIZE_BINS,
    resolution_complexity_pairs,
    resolution_complexity_spearman,
    resolution_histogram,
    spearman_correlation,
    spearman_within_size_bins,
)
from . import distributed as du
from .coco_results import masks_to_rles, predictions_to_coco_results
from .eval_job import check_image_sizes, prepare_job
from .eval_pass import measure_and_write, run_job_images
from .sharded_evaluate import evaluate_sharded

__all__ = [
    "METRIC_KEYS",
    "AP_KEYS",
    "RESOLUTIONS",
    "SIZE_BINS",
    "evaluate",
    "compute_coco_metrics",
    "predictions_to_coco_results",
    "masks_to_rles",
    "resolution_histogram",
    "resolution_complexity_spearman",
    "resolution_complexity_pairs",
    "spearman_within_size_bins",
    "spearman_correlation",
    "format_metrics_table",
    "write_json_atomic",
    "write_metrics_json",
    "evaluate_results",
    "load_results_file",
    "read_results_file",
]


def evaluate(
    cfg: dict | None = None,
    weights: str | os.PathLike | None = None,
    model: torch.nn.Module | None = None,
    out_dir: str | os.PathLike | None = None,
    policy: str | None = None,
    budget: float | None = None,
    dataset=None,
    max_images: int | None = None,
    device: Any = None,
    progress: bool = True,
    batch_size: int = 2,
    cat_ids: Sequence[int] | None = None,
    shard: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a model on a COCO-format validation set; AP values are on the 0–100 scale.

    Model: ``model`` as given, or built from the checkpoint ``weights`` (``cfg`` optional when
    the checkpoint carries its config; a given model stays on its device unless ``device`` is
    set, and a DDP-wrapped one is unwrapped). Dataset: ``dataset`` (a
    :class:`~dynamask.data.CocoInstanceDataset`) or one built from ``cfg`` ``data.val_json`` /
    ``data.val_images`` (a :class:`DynaMaskError` when they are not set); ``max_images`` limits it
    to its first images. Before the model runs, each image file's size is checked against its
    json ``width``/``height`` (header only; the EXIF orientation rule of
    :class:`~dynamask.data.CocoInstanceDataset`): a :class:`~dynamask.data.coco.DatasetError`
    naming the file when they disagree, as loading in training gives. ``policy`` / ``budget``
    set the model's resolution policy and test-time mask budget for this run (the model's
    previous settings and train/eval mode are restored).

    The model runs in eval mode without gradients, ``batch_size`` images per forward;
    ``images_per_second`` counts the forward passes only (no data loading, no evaluation).
    Detections with score ≥ ``test.score_thresh`` (the ``test.max_dets`` best per image) are
    *kept*; every statistic is over the kept detections:

    * COCO ``bbox_*``, ``segm_*`` and ``boundary_*`` APs, each ``AP``, ``AP50``, ``AP75``,
      ``APs``, ``APm``, ``APl`` (0–100) — see :func:`compute_coco_metrics`; None where undefined;
    * ``resolution_histogram`` {14: n, 28: n, 56: n, 112: n} (JSON keys are strings);
    * ``mask_gflops_per_instance`` (None with no detection) and ``mask_gflops_per_image``
      (mask-head GFLOPs of the kept instances, from the model's per-instance ``mask_flops``);
    * ``complexity_spearman`` / ``complexity_pairs`` — see
      :func:`resolution_complexity_spearman` (None when the gt has no ``complexity``);
    * ``complexity_spearman_within_size`` / ``complexity_spearman_by_size`` — the same ρ within
      bins of gt size and their pair-weighted mean (:func:`spearman_within_size_bins`): a choice
      that follows object size alone scores nothing here;
    * ``images_per_second``, ``num_images``, ``num_detections``, ``policy``, ``mask_budget``,
      ``max_dets``, ``score_thresh``.

    With ``out_dir``, writes ``coco_results.json`` (COCO results with extra fields
    ``mask_resolution`` and ``mask_flops``) and ``metrics.json``, both atomically; without it
    nothing is written. Returns the metrics dict (resolution histogram keyed by int).

    Sharded (``shard``: default True inside an initialised process group of more than one
    process, e.g. under ``torchrun``; every process must call this then): each process runs the
    model on its share of the images -- whole batches of ``batch_size`` dealt out in turn, so every
    forward pass sees the images it sees in one process -- on its own device (``cuda:LOCAL_RANK``
    for ``cuda``, a given model where it is) and checks only its images' sizes. Rank 0 gathers the
    detections, puts them in the single-process order (``coco_results.json`` is byte for byte a
    one-process run's, and so are the metrics), computes the metrics once and writes both files;
    every process returns rank 0's metrics. ``images_per_second`` is then all images over the
    slowest process's forward seconds (the group's throughput) and the metrics carry
    ``eval_processes``. A failure on any process raises on every process. ``shard=False`` runs
    the whole set in this process alone, whatever the process group.
    """
    if shard is None:
        shard = du.is_dist()
    if shard and du.is_dist():
        return evaluate_sharded(
            cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress, batch_size, cat_ids
        )
    job = prepare_job(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
    check_image_sizes(job["dataset"], job["indices"])
    run = run_job_images(job, job["indices"], policy, budget, progress)
    return measure_and_write(job, run, out_dir, progress=progress)
