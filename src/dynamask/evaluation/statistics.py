"""The switch statistics of a result set: the resolution histogram, the mask cost, and whether
finer masks go to harder outlines (Spearman's ρ between the chosen ``mask_resolution`` and the
matched ground truth's ``complexity``, overall and within bins of object size).

Why apart from the APs: they read the results' own fields (``mask_resolution``, ``mask_flops``)
and the ground truth's ``complexity``, not the COCO protocol.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..cocotools import mask_utils
from .results import ResultSet

__all__ = [
    "RESOLUTIONS",
    "SIZE_BINS",
    "resolution_histogram",
    "spearman_correlation",
    "resolution_complexity_pairs",
    "resolution_complexity_spearman",
    "spearman_within_size_bins",
    "result_statistics",
]

RESOLUTIONS = (14, 28, 56, 112)


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _gt_dict(gt: Any) -> dict:
    if isinstance(gt, Mapping):
        return dict(gt)
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # a pycocotools / faster_coco_eval COCO
        return gt.dataset
    from ..data import load_coco_json

    return load_coco_json(gt)


def resolution_histogram(results: Iterable[Mapping[str, Any]]) -> dict[int, int]:
    """{14: n, 28: n, 56: n, 112: n} over results entries' ``mask_resolution``."""
    hist = {r: 0 for r in RESOLUTIONS}
    for r in results:
        res = r.get("mask_resolution")
        if res is not None and int(res) in hist:
            hist[int(res)] += 1
    return hist


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman_correlation(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get average ranks); None with < 3 pairs or a constant
    variable. Uses scipy when installed."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.size < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    try:
        from scipy.stats import spearmanr
    except ImportError:
        rx, ry = _average_ranks(x), _average_ranks(y)
        rx -= rx.mean()
        ry -= ry.mean()
        denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
        return float((rx * ry).sum() / denom) if denom > 0 else None
    rho = spearmanr(x, y).statistic
    return _finite_or_none(rho)


def resolution_complexity_pairs(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    iou_thresh: float = 0.5,
) -> tuple[list[float], list[float], list[float]]:
    """(chosen ``mask_resolution``, ``complexity`` of the matched gt instance, that instance's
    size √(w·h) of its box) for every matched detection.

    Per image, detections (highest score first) are matched greedily to the unmatched non-crowd
    gt instance of highest mask IoU ≥ ``iou_thresh``, regardless of category (the question is
    whether harder outlines get finer masks, not whether the class is right). Only gt with a
    ``complexity`` field take part.
    """
    data = _gt_dict(gt)
    imgs = {int(i["id"]): i for i in data.get("images", [])}
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0) or ann.get("complexity") is None or ann.get("segmentation") is None:
            continue
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    if not by_image:
        return [], [], []
    from ..data import segmentation_to_rle  # imports torch: only when the ground truth has a complexity

    dets: dict[int, list[Mapping[str, Any]]] = {}
    for r in results:
        if r.get("mask_resolution") is None or "segmentation" not in r:
            continue
        dets.setdefault(int(r["image_id"]), []).append(r)

    xs: list[float] = []
    ys: list[float] = []
    sizes: list[float] = []
    for image_id, ds in dets.items():
        gts = by_image.get(image_id)
        if not gts:
            continue
        ds = sorted(ds, key=lambda r: -float(r["score"]))
        h, w = (int(v) for v in ds[0]["segmentation"]["size"])
        info = imgs.get(image_id, {})
        h, w = int(info.get("height") or h), int(info.get("width") or w)
        g_rles, g_cx, g_size = [], [], []
        for ann in gts:
            try:
                rle = segmentation_to_rle(ann["segmentation"], h, w)
            except (ValueError, TypeError, KeyError):
                rle = None
            if rle is not None:
                g_rles.append(rle)
                g_cx.append(float(ann["complexity"]))
                bw, bh = (float(v) for v in (ann.get("bbox") or [0, 0, 0, 0])[2:4])
                g_size.append(math.sqrt(max(bw, 0.0) * max(bh, 0.0)))
        if not g_rles:
            continue
        d_rles = [{"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"]} for r in ds]
        ious = np.asarray(mask_utils.iou(d_rles, g_rles, [0] * len(g_rles)), dtype=np.float64)
        ious = ious.reshape(len(d_rles), len(g_rles))
        taken = np.zeros(len(g_rles), dtype=bool)
        for k, r in enumerate(ds):
            cand = np.where(taken, -1.0, ious[k])
            j = int(np.argmax(cand))
            if cand[j] >= iou_thresh:
                taken[j] = True
                xs.append(float(r["mask_resolution"]))
                ys.append(g_cx[j])
                sizes.append(g_size[j])
    return xs, ys, sizes


def resolution_complexity_spearman(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    iou_thresh: float = 0.5,
) -> tuple[float | None, int]:
    """(Spearman ρ between chosen ``mask_resolution`` and the ``complexity`` of the matched gt
    instance, number of matched pairs) over :func:`resolution_complexity_pairs`; ρ is None when
    no gt has a complexity or there are < 3 pairs."""
    xs, ys, _ = resolution_complexity_pairs(gt, results, iou_thresh)
    return spearman_correlation(xs, ys), len(xs)


#: ground-truth size bins (√(w·h), pixels) for the within-size ρ: < 48, 48–96, 96–160, ≥ 160
SIZE_BINS: tuple[float, ...] = (48.0, 96.0, 160.0)


def spearman_within_size_bins(
    resolutions: Sequence[float],
    complexities: Sequence[float],
    sizes: Sequence[float],
    bins: Sequence[float] = SIZE_BINS,
) -> tuple[float | None, dict[str, dict]]:
    """ρ between resolution and complexity *within* bins of object size, so that a switch that
    only follows size cannot score: (the pair-weighted mean of the bins' ρ, per bin
    ``{"pairs", "rho"}``). A bin where every instance got the same resolution (or with < 3 pairs)
    has ρ None and is left out of the mean; None when every bin is."""
    x = np.asarray(resolutions, dtype=np.float64)
    y = np.asarray(complexities, dtype=np.float64)
    which = np.digitize(np.asarray(sizes, dtype=np.float64), np.asarray(bins, dtype=np.float64))
    edges = [0.0, *bins, float("inf")]
    per_bin: dict[str, dict] = {}
    total, weight = 0.0, 0
    for b in range(len(edges) - 1):
        keep = which == b
        rho = spearman_correlation(x[keep], y[keep])
        name = f"{edges[b]:g}-{edges[b + 1]:g}"
        per_bin[name] = {"pairs": int(keep.sum()), "rho": rho}
        if rho is not None:
            total += rho * int(keep.sum())
            weight += int(keep.sum())
    return (total / weight if weight else None), per_bin


def result_statistics(gt: dict, results: ResultSet | Sequence[Mapping[str, Any]], n_img: int) -> dict[str, Any]:
    """Mask cost, resolution histogram and complexity ρ from the results' own fields."""
    if isinstance(results, ResultSet):
        flops = results.mask_flops[~np.isnan(results.mask_flops)].tolist()
        res = results.mask_resolution
        hist = {r: int(np.count_nonzero(res == r)) for r in RESOLUTIONS}
        with_res = np.flatnonzero((res >= 0) & results.has_mask)
        entries: Iterable[Mapping[str, Any]] = results.entries(with_res) if _has_complexity(gt) else []
    else:
        flops = [float(r["mask_flops"]) for r in results if r.get("mask_flops") is not None]
        hist = resolution_histogram(results)
        entries = results
    res_cx_size = resolution_complexity_pairs(gt, list(entries))
    rho, pairs = spearman_correlation(*res_cx_size[:2]), len(res_cx_size[0])
    rho_within, rho_by_size = spearman_within_size_bins(*res_cx_size)
    return dict(
        mask_gflops_per_instance=(sum(flops) / len(flops) / 1e9) if flops else None,
        mask_gflops_per_image=sum(flops) / n_img / 1e9 if n_img else 0.0,
        resolution_histogram=hist,
        complexity_spearman=rho,
        complexity_spearman_within_size=rho_within,
        complexity_spearman_by_size=rho_by_size,
        complexity_pairs=pairs,
    )


def _has_complexity(gt: Mapping[str, Any]) -> bool:
    return any(a.get("complexity") is not None for a in gt.get("annotations", []))
