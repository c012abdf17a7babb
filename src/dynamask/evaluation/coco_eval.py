"""COCO box, mask and boundary AP of a :class:`~.results.ResultSet`, exact to pycocotools, fast.

How: the ground truth is read once into arrays (:mod:`.ground_truth`); the IoU matrices of each
image (box, mask, boundary) are computed from the flat results over chunks of images, in worker
processes when the set is large (:mod:`.image_ious`); matching and accumulation run in
faster-coco-eval's C++ core (``COCOevalEvaluateAccumulate``, the detectron2 ``COCOeval_opt``
algorithm), fed a few categories at a time so that only those detections are ever Python dicts.
pycocotools' ``COCOeval`` stays the reference in the tests (equal to 1e-4 in ``precision``).

The protocol is pycocotools': per (image, category) the detections sorted by score (ties in file
order) and cut to the largest ``maxDets``; crowd ground truth matched without being used up and
never a miss; area ranges from the ground truth's json ``area`` and the detection's box area
(box AP) or mask area (mask and boundary AP); ``precision`` [T × R × K × A × M] is read at the
``max_dets`` index, so ``max_dets`` other than 100 is honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..progress import progress_bar
from .ground_truth import GroundTruth, ground_truth_arrays
from .image_ious import chunk_ious
from .matching import AREA_LABELS, IOU_THRESHOLDS, max_dets_list, precision_task
from .results import ResultSet, results_from_entries

__all__ = ["AP_KEYS", "IOU_TYPES", "compute_coco_metrics", "coco_precisions", "ap_summary", "max_dets_list"]

logger = logging.getLogger("dynamask.evaluation")

IOU_TYPES = ("bbox", "segm", "boundary")
#: AP keys (0–100 scale) produced by :func:`compute_coco_metrics`
AP_KEYS: tuple[str, ...] = tuple(
    f"{kind}_{k}" for kind in IOU_TYPES for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
)
#: images per task of the IoU pass
IMAGES_PER_TASK = 64
#: below this many detections the IoU pass runs in this process (starting workers costs more)
PARALLEL_MIN_DETECTIONS = 20_000
#: categories handed to the C++ matcher at a time (their detections become dicts meanwhile)
CATEGORIES_PER_CALL = 8


def ap_summary(kind: str, precision: np.ndarray, max_dets: int) -> dict[str, float | None]:
    """The six AP numbers (0–100) of one IoU type from its ``precision`` array; None where no
    category has ground truth in that area range."""
    m = max_dets_list(max_dets).index(int(max_dets))

    def mean(iou: float | None = None, area: str = "all") -> float | None:
        s = precision[:, :, :, AREA_LABELS.index(area), m]
        if iou is not None:
            s = s[np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))]
        valid = s[s > -1]
        return float(np.mean(valid)) * 100.0 if valid.size else None

    return {
        f"{kind}_AP": mean(),
        f"{kind}_AP50": mean(iou=0.5),
        f"{kind}_AP75": mean(iou=0.75),
        f"{kind}_APs": mean(area="small"),
        f"{kind}_APm": mean(area="medium"),
        f"{kind}_APl": mean(area="large"),
    }


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------
# the detections each (image, category) is scored with
# --------------------------------------------------------------------------
def _scored_rows(res: ResultSet, gt: GroundTruth, max_det: int) -> np.ndarray:
    """Rows of ``res`` that take part, sorted by (image, category, score descending, file order),
    at most ``max_det`` per (image, category): those of evaluated images and known categories."""
    keep = np.isin(res.image_ids, gt.image_ids) & np.isin(res.category_ids, gt.category_ids)
    rows = np.flatnonzero(keep)
    order = np.lexsort((-res.scores[rows], res.category_ids[rows], res.image_ids[rows]))
    rows = rows[order]
    if rows.size:
        key = res.image_ids[rows] * (int(gt.category_ids.max()) + 1) + res.category_ids[rows]
        start = np.r_[True, key[1:] != key[:-1]]
        first = np.maximum.accumulate(np.where(start, np.arange(rows.size), 0))
        rows = rows[np.arange(rows.size) - first < max_det]
    return rows


def _tasks(res: ResultSet, rows: np.ndarray, gt: GroundTruth, kinds: Sequence[str], ratio: float):
    """The IoU pass's tasks: :data:`IMAGES_PER_TASK` images each, with their rows only."""
    masks = "segm" in kinds or "boundary" in kinds
    d_img = res.image_ids[rows]
    g_order = np.argsort(gt.ann_image, kind="stable")  # file order within an image
    g_img = gt.ann_image[g_order]
    for lo in range(0, len(gt.image_ids), IMAGES_PER_TASK):
        ids = gt.image_ids[lo : lo + IMAGES_PER_TASK]
        d_off = np.searchsorted(d_img, np.r_[ids, ids[-1] + 1]) if ids.size else np.zeros(1, np.int64)
        g_off = np.searchsorted(g_img, np.r_[ids, ids[-1] + 1])
        d_rows = rows[d_off[0] : d_off[-1]]
        g_rows = g_order[g_off[0] : g_off[-1]]
        yield {
            "kinds": tuple(kinds),
            "ratio": ratio,
            "sizes": np.stack([gt.heights[lo : lo + len(ids)], gt.widths[lo : lo + len(ids)]], 1),
            "det_offsets": d_off - d_off[0],
            "gt_offsets": g_off - g_off[0],
            "det_category": res.category_ids[d_rows],
            "det_box": res.boxes[d_rows],
            "det_counts": [res.counts(i) for i in d_rows.tolist()] if masks else [],
            "gt_category": gt.ann_category[g_rows],
            "gt_box": gt.ann_box[g_rows],
            "gt_crowd": gt.ann_crowd[g_rows],
            "gt_counts": [gt.counts(k) for k in g_rows.tolist()] if masks else [],
            "gt_rows": g_rows,
        }


@contextlib.contextmanager
def _workers(count: int):
    """``map`` over ``count`` worker processes (in order, lazily), or the builtin one for 1 (and in
    a daemonic process, e.g. a pool's worker, which may not start processes)."""
    import multiprocessing

    if count <= 1 or multiprocessing.current_process().daemon:
        yield map
        return

    # a fresh small process forks the workers, not this one (its memory, CUDA, threads); it imports
    # nothing itself, so that the workers import dynamask from this process's sys.path
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([])
    else:  # Windows
        context = multiprocessing.get_context("spawn")
    pool = context.Pool(count)
    try:
        yield pool.imap
    finally:
        pool.terminate()


def _iou_pass(
    res: ResultSet, rows: np.ndarray, gt: GroundTruth, kinds: Sequence[str], ratio: float, run, progress: bool
):
    """{kind: {(image id, category): matrix}} over all images, and the mask area of each row."""
    ious: dict[str, dict[tuple[int, int], np.ndarray]] = {k: {} for k in kinds}
    areas: list[np.ndarray] = []
    first = 0
    with progress_bar(len(gt.image_ids), "score (IoUs)", unit="img", enabled=progress) as bar:
        for task_areas, per_image in run(chunk_ious, _tasks(res, rows, gt, kinds, ratio)):
            for j, blocks in enumerate(per_image):
                image_id = int(gt.image_ids[first + j])
                for c, block in blocks.items():
                    for kind in kinds:
                        ious[kind][image_id, c] = block[kind]
            areas.append(task_areas)
            first += len(per_image)
            bar.update(len(per_image))
    return ious, (np.concatenate(areas) if areas else np.zeros(0))


def _precision_tasks(
    gt: GroundTruth, det: dict[str, np.ndarray], ious: dict[str, dict[tuple[int, int], np.ndarray]], max_dets: int
):
    """The matcher's tasks: each IoU type × :data:`CATEGORIES_PER_CALL` categories, with their rows only."""
    cats = gt.category_ids
    img_ids = gt.image_ids.tolist()
    g_order = np.argsort(gt.ann_category, kind="stable")  # file order within a category
    d_order = np.argsort(det["category"], kind="stable")  # score order within an (image, category)
    g_bounds = np.searchsorted(gt.ann_category[g_order], cats)
    d_bounds = np.searchsorted(det["category"][d_order], cats)
    for kind, matrices in ious.items():
        chunk_of = {}
        for (i, c), m in matrices.items():
            chunk_of.setdefault(int(np.searchsorted(cats, c)) // CATEGORIES_PER_CALL, {})[i, c] = m
        for lo in range(0, len(cats), CATEGORIES_PER_CALL):
            hi = min(lo + CATEGORIES_PER_CALL, len(cats))
            g = g_order[g_bounds[lo] : (g_bounds[hi] if hi < len(cats) else len(g_order))]
            d = d_order[d_bounds[lo] : (d_bounds[hi] if hi < len(cats) else len(d_order))]
            yield {
                "kind": kind,
                "first": lo,
                "img_ids": img_ids,
                "cat_ids": cats[lo:hi].tolist(),
                "max_dets": max_dets,
                "gt_image": gt.ann_image[g],
                "gt_category": gt.ann_category[g],
                "gt_area": gt.ann_area[g],
                "gt_crowd": gt.ann_crowd[g],
                "det_image": det["image"][d],
                "det_category": det["category"][d],
                "det_score": det["score"][d],
                "det_area": det["area_" + ("bbox" if kind == "bbox" else "mask")][d],
                "det_id": d + 1,
                "ious": chunk_of.get(lo // CATEGORIES_PER_CALL, {}),
            }


# --------------------------------------------------------------------------
# results -> AP
# --------------------------------------------------------------------------
def coco_precisions(
    gt: Any,
    results: ResultSet | Sequence[Mapping[str, Any]],
    max_dets: int = 100,
    img_ids: Sequence[int] | None = None,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    boundary: bool = True,
    boundary_dilation_ratio: float = 0.02,
    cpu_count: int | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """{IoU type: pycocotools' ``eval["precision"]``} of ``results`` against ``gt`` for the
    types the results allow (box AP when every detection has a box, mask and boundary AP when
    every one has a mask); the arguments are :func:`compute_coco_metrics`'."""
    gt_data = _gt_dict(gt)
    res = results if isinstance(results, ResultSet) else results_from_entries(results)
    kinds = [
        k
        for k, wanted in (
            ("bbox", bool(res.has_box.all())),
            ("segm", bool(res.has_mask.all())),
            ("boundary", boundary and bool(res.has_mask.all())),
        )
        if wanted
    ]
    garr = ground_truth_arrays(gt_data, img_ids, image_sizes, masks="segm" in kinds)
    if not len(garr.image_ids) or not kinds:
        return {}
    rows = _scored_rows(res, garr, max_dets_list(max_dets)[-1])
    if cpu_count is None:
        cpu_count = _available_cpus() if len(rows) >= PARALLEL_MIN_DETECTIONS else 1
    with _workers(max(1, int(cpu_count))) as run:
        ious, mask_areas = _iou_pass(res, rows, garr, kinds, boundary_dilation_ratio, run, progress)
        det = {
            "image": res.image_ids[rows],
            "category": res.category_ids[rows],
            "score": res.scores[rows],
            "area_bbox": res.boxes[rows, 2] * res.boxes[rows, 3],
            "area_mask": mask_areas,
        }
        parts: dict[str, list[tuple[int, np.ndarray]]] = {k: [] for k in kinds}
        tasks = _precision_tasks(garr, det, ious, max_dets)
        with progress_bar(
            len(kinds) * -(-len(garr.category_ids) // CATEGORIES_PER_CALL),
            "score (matching)",
            unit="task",
            enabled=progress,
        ) as bar:
            for kind, first, precision in run(precision_task, tasks):
                parts[kind].append((first, precision))
                bar.update(1)
    return {k: np.concatenate([p for _, p in sorted(parts[k], key=lambda fp: fp[0])], axis=2) for k in kinds}


def compute_coco_metrics(
    gt: Any,
    results: ResultSet | Sequence[Mapping[str, Any]],
    max_dets: int = 100,
    img_ids: Sequence[int] | None = None,
    image_sizes: Mapping[int, tuple[int, int]] | None = None,
    boundary: bool = True,
    boundary_dilation_ratio: float = 0.02,
    cpu_count: int | None = None,
    progress: bool = False,
) -> dict[str, float | None]:
    """COCO box, mask and boundary AP (0–100 scale) of ``results`` against ``gt``.

    ``gt``: a COCO annotation dict, a json path or a COCO object (its ``dataset``; never
    modified). ``results``: a :class:`ResultSet` or COCO results entries (``image_id``,
    ``category_id``, ``score``, ``bbox`` and/or ``segmentation`` as RLE). ``img_ids``: the images
    evaluated (default: all gt images). Returns :data:`AP_KEYS`; a value is None when undefined
    (no gt in that category/area range, or not every detection has a box / a mask); with no
    detections but some gt, APs are 0.0. ``image_sizes`` ({image_id: (h, w)}) fills gt images
    lacking height/width. ``cpu_count``: processes for the IoU pass (default: every core this
    process may use, for sets of :data:`PARALLEL_MIN_DETECTIONS` detections or more);
    ``progress``: a progress line while it scores.
    """
    out: dict[str, float | None] = {k: None for k in AP_KEYS}
    precisions = coco_precisions(
        gt, results, max_dets, img_ids, image_sizes, boundary, boundary_dilation_ratio, cpu_count, progress
    )
    for kind, precision in precisions.items():
        out.update(ap_summary(kind, precision, max_dets))
    return out


def _gt_dict(gt: Any) -> dict:
    if isinstance(gt, Mapping):
        return dict(gt)
    if isinstance(gt, (str, os.PathLike)):
        from ..coco_json import load_coco_json

        return load_coco_json(gt)
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # a pycocotools / faster_coco_eval COCO
        return gt.dataset
    raise TypeError(f"ground truth must be a COCO dict, a json path or a COCO object, got {type(gt).__name__}")
