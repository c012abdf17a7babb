"""COCO evaluation of a dynamask model: box/mask/boundary AP plus the mask-head cost statistics.

:func:`evaluate` runs a model over a COCO-format validation set and returns (and, with
``out_dir``, writes) a metrics dict; :func:`compute_coco_metrics` is the results → AP step on its
own (it is what :func:`evaluate` uses, and it accepts any COCO results list, e.g. the ground truth
itself as a sanity check). All AP values are on the **0–100** scale.

Evaluators
----------
* ``bbox`` and ``segm`` AP: ``pycocotools`` ``COCOeval``.
* boundary AP: ``faster_coco_eval`` ``COCOeval_faster(iouType="boundary")`` (Boundary IoU of
  Cheng et al. 2021, dilation ratio 0.02, computed on CPU, no download).

Both read ``iscrowd`` (and ``area``) from the ground-truth json, so crowd regions are ignored as
in the official COCO protocol. ``params.maxDets`` is ``[1, 10, max_dets]`` (sorted, deduplicated)
and every number is read from ``eval["precision"]`` at the ``max_dets`` index, so a ``max_dets``
other than 100 is honoured (pycocotools' own ``summarize`` assumes 100). For mask/boundary AP the
results are given without ``bbox`` so that the small/medium/large split uses the mask area (as
detectron2 does); box AP uses box area.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from ..cocotools import mask_utils

from ..atomic import write_bytes_atomic
from ..errors import DynaMaskError
from ..inference import apply_policy, model_from_checkpoint, resolve_device
from ..progress import progress_bar
from . import distributed as du

__all__ = [
    "METRIC_KEYS",
    "AP_KEYS",
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
]

logger = logging.getLogger("dynamask.evaluate")

RESOLUTIONS = (14, 28, 56, 112)

#: AP keys (0–100 scale) produced by :func:`compute_coco_metrics`
AP_KEYS: Tuple[str, ...] = tuple(
    f"{kind}_{k}" for kind in ("bbox", "segm", "boundary") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")
)

#: keys always present in the metrics dict returned by :func:`evaluate` / ``metrics.json``
METRIC_KEYS: Tuple[str, ...] = AP_KEYS + (
    "mask_gflops_per_instance", "mask_gflops_per_image", "resolution_histogram", "images_per_second",
    "num_images", "num_detections", "policy", "mask_budget", "mask_score_floor", "mask_geometry", "complexity_spearman",
    "complexity_spearman_within_size", "complexity_spearman_by_size",
    "complexity_pairs", "max_dets", "score_thresh",
)


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def write_json_atomic(path: str | os.PathLike, obj: Any, indent: Optional[int] = None) -> str:
    """``json.dump`` to a temp file in the same folder, then ``os.replace`` (never a torn file)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return write_bytes_atomic(path, text.encode("utf-8"))


def masks_to_rles(masks: np.ndarray) -> List[dict]:
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


def _finite_or_none(v: Any) -> Optional[float]:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------
# predictions → COCO results
# --------------------------------------------------------------------------
def predictions_to_coco_results(
    prediction: Mapping[str, Any],
    image_id: int,
    cat_ids: Sequence[int],
    score_thresh: float = 0.0,
    max_dets: Optional[int] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> List[dict]:
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
    rles: List[Optional[dict]]
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


# --------------------------------------------------------------------------
# COCO AP
# --------------------------------------------------------------------------
def _gt_dict(gt: Any) -> dict:
    if isinstance(gt, Mapping):
        return dict(gt)
    if isinstance(gt, (str, os.PathLike)):
        from ..data import load_coco_json

        return load_coco_json(gt)
    if hasattr(gt, "dataset") and isinstance(gt.dataset, dict):  # a pycocotools / faster_coco_eval COCO
        return gt.dataset
    raise TypeError(f"ground truth must be a COCO dict, a json path or a COCO object, got {type(gt).__name__}")


def _prepare_gt(gt: dict, img_ids: Optional[Iterable[int]],
                image_sizes: Optional[Mapping[int, Tuple[int, int]]]) -> dict:
    """The gt restricted to ``img_ids``, in new image, annotation and category dicts (the
    caller's are never touched), with missing image ``height``/``width`` filled from
    ``image_sizes`` and annotation ids ensured. The values inside (polygons, RLEs, boxes) are
    shared with ``gt``: the evaluators only set or replace keys of the dicts (see
    :func:`_own_dicts`)."""
    keep = None if img_ids is None else {int(i) for i in img_ids}
    images = []
    for img in gt.get("images", []):
        if keep is not None and int(img["id"]) not in keep:
            continue
        img = dict(img)
        if (not img.get("height") or not img.get("width")) and image_sizes and int(img["id"]) in image_sizes:
            img["height"], img["width"] = (int(v) for v in image_sizes[int(img["id"])])
        images.append(img)
    image_ids = {int(img["id"]) for img in images}
    anns = []
    for k, ann in enumerate(gt.get("annotations", [])):
        if int(ann["image_id"]) not in image_ids:
            continue
        ann = dict(ann)
        ann.setdefault("id", k + 1)
        ann.setdefault("iscrowd", 0)
        anns.append(ann)
    if len({a["id"] for a in anns}) != len(anns):  # duplicate ids would confuse the evaluators
        for k, a in enumerate(anns):
            a["id"] = k + 1
    return {"info": gt.get("info", {}), "images": images, "annotations": anns,
            "categories": [dict(c) for c in gt.get("categories", [])]}


def _own_dicts(gt_data: dict) -> dict:
    """``gt_data`` with new top-level dicts for its images, annotations and categories, the values
    inside shared. That is all the copying the evaluators need: pycocotools' ``loadRes`` sets
    ``area``/``id``/``iscrowd``/``bbox`` (and a box polygon as ``segmentation``) on each result
    entry, ``COCOeval`` sets ``ignore`` on gt annotations and replaces each one's ``segmentation``
    by its RLE (``annToRLE`` builds a new object, leaving the polygon list as it was), and
    faster-coco-eval sets ``ignore``/``rle``/``boundary`` and match keys -- keys of the dicts, never
    the lists and dicts they hold (``tests/test_evaluate.py`` checks that neither the gt nor the
    results are changed). Each evaluator gets its own so that no key one sets is seen by the next
    (a ``bbox`` that ``loadRes`` added would send faster-coco-eval's ``loadRes`` down its box path)."""
    return {"info": gt_data.get("info", {}), "images": [dict(i) for i in gt_data["images"]],
            "annotations": [dict(a) for a in gt_data["annotations"]],
            "categories": [dict(c) for c in gt_data["categories"]]}


def _max_dets_list(max_dets: int) -> List[int]:
    return sorted({1, 10, int(max_dets)})


def _read_ap(E, max_dets: int, iou: Optional[float] = None, area: str = "all") -> Optional[float]:
    """Mean precision (×100) over IoU thresholds/recall/categories at one area range and maxDets,
    read straight from ``eval['precision']`` [T×R×K×A×M]; None when no category has gt there."""
    prec = np.asarray(E.eval["precision"])
    p = E.params
    m = list(p.maxDets).index(int(max_dets))
    a = list(p.areaRngLbl).index(area)
    s = prec[:, :, :, a, m]
    if iou is not None:
        t = np.where(np.isclose(np.asarray(p.iouThrs), iou))[0]
        s = s[t]
    valid = s[s > -1]
    return float(np.mean(valid)) * 100.0 if valid.size else None


def _ap_set(kind: str, E, max_dets: int) -> Dict[str, Optional[float]]:
    return {
        f"{kind}_AP": _read_ap(E, max_dets),
        f"{kind}_AP50": _read_ap(E, max_dets, iou=0.5),
        f"{kind}_AP75": _read_ap(E, max_dets, iou=0.75),
        f"{kind}_APs": _read_ap(E, max_dets, area="small"),
        f"{kind}_APm": _read_ap(E, max_dets, area="medium"),
        f"{kind}_APl": _read_ap(E, max_dets, area="large"),
    }


def _pycoco_eval(gt_coco, results: List[dict], iou_type: str, img_ids: List[int], max_dets: int):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt_coco.loadRes(results)
        else:  # pycocotools' loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": list(gt_coco.dataset["images"]), "annotations": [],
                          "categories": copy.deepcopy(gt_coco.dataset["categories"])}
            dt.createIndex()
        E = COCOeval(gt_coco, dt, iou_type)
        E.params.imgIds = img_ids
        E.params.maxDets = _max_dets_list(max_dets)
        E.evaluate()
        E.accumulate()
    return E


def _boundary_eval(gt: dict, results: List[dict], img_ids: List[int], max_dets: int,
                   dilation_ratio: float, cpu_count: int):
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    quiet = logging.getLogger("faster_coco_eval").debug
    gt_coco = FCOCO(_own_dicts(gt), use_deepcopy=False, print_function=quiet)
    dt = gt_coco.loadRes(results)  # new entry dicts from the caller (see _own_dicts)
    E = COCOeval_faster(gt_coco, dt, iouType="boundary", print_function=quiet,
                        boundary_dilation_ratio=dilation_ratio, boundary_cpu_count=max(1, cpu_count),
                        rle_iou_max_workers=max(1, cpu_count))
    E.params.imgIds = img_ids
    E.params.maxDets = _max_dets_list(max_dets)
    E.evaluate()
    E.accumulate()
    return E


def compute_coco_metrics(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    max_dets: int = 100,
    img_ids: Optional[Iterable[int]] = None,
    image_sizes: Optional[Mapping[int, Tuple[int, int]]] = None,
    boundary: bool = True,
    boundary_dilation_ratio: float = 0.02,
    cpu_count: int = 1,
) -> Dict[str, Optional[float]]:
    """COCO box, mask and boundary AP (0–100 scale) of ``results`` against ``gt``.

    ``gt``: a COCO annotation dict, a json path or a COCO object (its ``dataset`` is used; never
    modified). ``results``: COCO results entries (``image_id``, ``category_id``, ``score``,
    ``bbox`` and/or ``segmentation`` as RLE). ``img_ids``: the images evaluated (default: all gt
    images). Returns :data:`AP_KEYS`; a value is ``None`` when undefined (no gt in that category/
    area range, or no ``segmentation`` field for mask/boundary AP); with no detections but some
    gt, APs are 0.0. ``image_sizes`` ({image_id: (h, w)}) fills gt images lacking height/width.
    """
    gt_data = _prepare_gt(_gt_dict(gt), img_ids, image_sizes)
    ids = sorted(int(img["id"]) for img in gt_data["images"])
    idset = set(ids)
    results = [r for r in results if int(r["image_id"]) in idset]
    out: Dict[str, Optional[float]] = {k: None for k in AP_KEYS}
    if not ids:
        return out

    from pycocotools.coco import COCO

    has_boxes = (not results) or all("bbox" in r for r in results)
    has_segm = (not results) or all("segmentation" in r for r in results)

    def gt_coco():  # each evaluator its own annotation dicts (it sets keys on them; see _own_dicts)
        coco = COCO()
        coco.dataset = _own_dicts(gt_data)
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    # the result entries each evaluator gets are new dicts, the values in them shared (_own_dicts)
    if has_boxes:
        box_res = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        E = _pycoco_eval(gt_coco(), box_res, "bbox", ids, max_dets)
        out.update(_ap_set("bbox", E, max_dets))
        del box_res, E
    if has_segm:
        segm_res = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
        E = _pycoco_eval(gt_coco(), segm_res, "segm", ids, max_dets)
        out.update(_ap_set("segm", E, max_dets))
        del segm_res, E
        if boundary:
            segm_res = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            E = _boundary_eval(gt_data, segm_res, ids, max_dets, boundary_dilation_ratio, cpu_count)
            out.update(_ap_set("boundary", E, max_dets))
    return out


# --------------------------------------------------------------------------
# resolution statistics
# --------------------------------------------------------------------------
def resolution_histogram(results: Iterable[Mapping[str, Any]]) -> Dict[int, int]:
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
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def spearman_correlation(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
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
    gt: Any, results: Sequence[Mapping[str, Any]], iou_thresh: float = 0.5,
) -> Tuple[List[float], List[float], List[float]]:
    """(chosen ``mask_resolution``, ``complexity`` of the matched gt instance, that instance's
    size √(w·h) of its box) for every matched detection.

    Per image, detections (highest score first) are matched greedily to the unmatched non-crowd
    gt instance of highest mask IoU ≥ ``iou_thresh``, regardless of category (the question is
    whether harder outlines get finer masks, not whether the class is right). Only gt with a
    ``complexity`` field take part.
    """
    from ..data import segmentation_to_rle

    data = _gt_dict(gt)
    imgs = {int(i["id"]): i for i in data.get("images", [])}
    by_image: Dict[int, List[dict]] = {}
    for ann in data.get("annotations", []):
        if ann.get("iscrowd", 0) or ann.get("complexity") is None or ann.get("segmentation") is None:
            continue
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    if not by_image:
        return [], [], []
    dets: Dict[int, List[Mapping[str, Any]]] = {}
    for r in results:
        if r.get("mask_resolution") is None or "segmentation" not in r:
            continue
        dets.setdefault(int(r["image_id"]), []).append(r)

    xs: List[float] = []
    ys: List[float] = []
    sizes: List[float] = []
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
    gt: Any, results: Sequence[Mapping[str, Any]], iou_thresh: float = 0.5,
) -> Tuple[Optional[float], int]:
    """(Spearman ρ between chosen ``mask_resolution`` and the ``complexity`` of the matched gt
    instance, number of matched pairs) over :func:`resolution_complexity_pairs`; ρ is None when
    no gt has a complexity or there are < 3 pairs."""
    xs, ys, _ = resolution_complexity_pairs(gt, results, iou_thresh)
    return spearman_correlation(xs, ys), len(xs)


#: ground-truth size bins (√(w·h), pixels) for the within-size ρ: < 48, 48–96, 96–160, ≥ 160
SIZE_BINS: Tuple[float, ...] = (48.0, 96.0, 160.0)


def spearman_within_size_bins(resolutions: Sequence[float], complexities: Sequence[float],
                              sizes: Sequence[float], bins: Sequence[float] = SIZE_BINS,
                              ) -> Tuple[Optional[float], Dict[str, dict]]:
    """ρ between resolution and complexity *within* bins of object size, so that a switch that
    only follows size cannot score: (the pair-weighted mean of the bins' ρ, per bin
    ``{"pairs", "rho"}``). A bin where every instance got the same resolution (or with < 3 pairs)
    has ρ None and is left out of the mean; None when every bin is."""
    x = np.asarray(resolutions, dtype=np.float64)
    y = np.asarray(complexities, dtype=np.float64)
    which = np.digitize(np.asarray(sizes, dtype=np.float64), np.asarray(bins, dtype=np.float64))
    edges = [0.0, *bins, float("inf")]
    per_bin: Dict[str, dict] = {}
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


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(
    cfg: Optional[dict] = None,
    weights: Optional[str | os.PathLike] = None,
    model: Optional[torch.nn.Module] = None,
    out_dir: Optional[str | os.PathLike] = None,
    policy: Optional[str] = None,
    budget: Optional[float] = None,
    dataset=None,
    max_images: Optional[int] = None,
    device: Any = None,
    progress: bool = True,
    batch_size: int = 2,
    cat_ids: Optional[Sequence[int]] = None,
    shard: Optional[bool] = None,
) -> Dict[str, Any]:
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
    if not (shard and du.is_dist()):
        job = _prepare(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
        _check_sizes(job["dataset"], job["indices"])
        run = _run_model(job["model"], _loader(job, job["indices"]), job["dev"], policy, budget, job["cat_ids"],
                         job["score_thresh"], job["max_dets"], len(job["indices"]), progress)
        return _measure_and_write(job, run, out_dir)
    return _evaluate_sharded(cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress,
                             batch_size, cat_ids)


def _prepare(cfg, weights, model, dataset, max_images, device, batch_size: int, cat_ids) -> Dict[str, Any]:
    """Model, config, dataset, category ids, the images evaluated (not yet checked) and the device."""
    from ..config import default_config

    ckpt: dict = {}
    model_given = model is not None
    if model is None:
        if weights is None:
            raise DynaMaskError("evaluate: give a checkpoint (weights) or a model")
        model, ckpt = model_from_checkpoint(os.fspath(weights), cfg)
        cfg = cfg or ckpt.get("config")
    if cfg is None:
        cfg = default_config()
    test_cfg = {**default_config()["test"], **(cfg.get("test") or {})}
    if batch_size < 1:
        raise DynaMaskError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if dataset is None:
        dataset = _validation_dataset(cfg)
    cat_ids = _category_ids(cat_ids, ckpt, dataset)
    indices = _image_indices(dataset, max_images)
    if not hasattr(model, "policy") and hasattr(model, "module"):  # DistributedDataParallel / DataParallel
        model = model.module
    if device is None and model_given:  # keep a given model where it is (e.g. cuda:1 during training)
        param = next(iter(model.parameters()), None)
        dev = param.device if param is not None else du.process_device(resolve_device(None))
    else:
        dev = du.process_device(resolve_device(device))  # cuda: this process's own GPU under torchrun
    return {"model": model, "cfg": cfg, "dataset": dataset, "cat_ids": cat_ids, "indices": indices, "dev": dev,
            "max_dets": int(test_cfg["max_dets"]), "score_thresh": float(test_cfg["score_thresh"]),
            "batch_size": int(batch_size), "num_workers": int((cfg.get("data") or {}).get("num_workers", 0) or 0)}


def _loader(job: Dict[str, Any], indices: List[int]):
    from ..data import collate_fn

    dataset = job["dataset"]
    subset = dataset if indices == list(range(len(dataset))) else torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(subset, batch_size=job["batch_size"], shuffle=False,
                                       num_workers=job["num_workers"], collate_fn=collate_fn)


def _measure_and_write(job: Dict[str, Any], run: Dict[str, Any], out_dir, processes: int = 1) -> Dict[str, Any]:
    """coco_results.json, the metrics, metrics.json."""
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        write_json_atomic(os.path.join(out_dir, "coco_results.json"), run["results"])
    dataset = job["dataset"]
    metrics = _metrics(dataset.coco.dataset, run, job["model"], job["max_dets"], job["score_thresh"])
    if hasattr(dataset, "release_ground_truth"):  # not kept alive for the next fork of the training workers
        dataset.release_ground_truth()
    if processes > 1:
        metrics["eval_processes"] = processes
    if out_dir is not None:
        write_metrics_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> str:
    """``metrics.json``: the resolution histogram keyed by str, non-finite floats as null; atomic."""
    saved = dict(metrics)
    saved["resolution_histogram"] = {str(k): v for k, v in (metrics.get("resolution_histogram") or {}).items()}
    saved = {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in saved.items()}
    return write_json_atomic(path, saved, indent=2)


def _evaluate_sharded(cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress,
                      batch_size, cat_ids) -> Dict[str, Any]:
    """:func:`evaluate` inside a process group: this process runs the model on its shard (whole
    batches dealt out in turn, :func:`~dynamask.engine.distributed.shard_positions`), rank 0
    gathers the detections, puts them in the single-process order, computes the metrics and
    writes the files, and every process returns rank 0's metrics. A failure on any process
    raises on every process (at the same step, so none waits for the others)."""
    rank, world = du.get_rank(), du.get_world_size()
    failure: Optional[BaseException] = None
    job: Dict[str, Any] = {}
    mine: List[int] = []
    try:
        job = _prepare(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
        mine = [job["indices"][p] for p in du.shard_positions(len(job["indices"]), rank, world, batch_size)]
        _check_sizes(job["dataset"], mine)  # every image checked once, by the process that loads it
    except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every process
        failure = exc
    du.agree_on_failure(failure, "evaluate")

    payload: Tuple[Optional[str], Optional[dict]]
    try:
        run = _run_model(job["model"], _loader(job, mine), job["dev"], policy, budget, job["cat_ids"],
                         job["score_thresh"], job["max_dets"], len(mine), progress and rank == 0)
        payload = (None, run)
    except Exception as exc:  # noqa: BLE001
        failure, payload = exc, (f"{type(exc).__name__}: {exc}", None)
    gathered = du.gather_object(payload)
    del payload
    status: Tuple[str, Any, Any] = ("ok", None, None)
    if rank == 0:
        try:
            failed = [(r, text) for r, (text, _) in enumerate(gathered) if text is not None]
            if failed:
                status = ("failed", *failed[0])
            else:
                n = len(job["indices"])
                shards = [du.shard_positions(n, r, world, batch_size) for r in range(world)]
                run = _merge_runs([part for _, part in gathered], shards, n)
                del gathered
                metrics = _measure_and_write(job, run, out_dir, processes=world)
                logger.info("evaluated %d image(s) on %d processes (%s image(s) each); images_per_second: all "
                            "images over the slowest process's forward time", n, world,
                            "/".join(str(len(s)) for s in shards))
                status = ("ok", None, metrics)
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
            status = ("failed", 0, f"{type(exc).__name__}: {exc}")
    return du.settle_on_rank0_status(status, failure, "evaluate")[2]


def _merge_runs(runs: Sequence[Dict[str, Any]], shards: Sequence[Sequence[int]], n: int) -> Dict[str, Any]:
    """The processes' runs as one, images (and their detections) in the single-process order;
    ``forward_s`` is the slowest process's."""
    per_position: List[Any] = [None] * n
    for run, shard in zip(runs, shards):
        k = 0
        for position, image_id, count in zip(shard, run["image_ids"], run["counts"]):
            per_position[position] = (image_id, run["results"][k:k + count])
            k += count
    results = [r for _, rs in per_position for r in rs]
    image_ids = [image_id for image_id, _ in per_position]
    sizes: Dict[int, Tuple[int, int]] = {}
    for run in runs:
        sizes.update(run["image_sizes"])
    return {"results": results, "image_ids": image_ids, "image_sizes": {i: sizes[i] for i in image_ids},
            "counts": [len(rs) for _, rs in per_position], "forward_s": max(run["forward_s"] for run in runs),
            "policy": runs[0]["policy"], "budget": runs[0]["budget"]}


def _validation_dataset(cfg: dict):
    """``data.val_json`` / ``data.val_images`` as a dataset without transforms (images as stored)."""
    data_cfg = cfg.get("data") or {}
    val_json, val_images = data_cfg.get("val_json"), data_cfg.get("val_images")
    if not val_json or not val_images:
        raise DynaMaskError("no validation set: set data.val_json and data.val_images "
                            "(in the config or as data.val_json=... on the command line)")
    if not os.path.isdir(val_images):
        raise DynaMaskError(f"data.val_images: {val_images!r} is not a folder")
    from ..data import CocoInstanceDataset

    return CocoInstanceDataset(val_json, val_images, transforms=None, keep_empty=True, validate_masks=False)


def _category_ids(cat_ids, ckpt: dict, dataset) -> List[int]:
    """Label → COCO category id: as given, else the checkpoint's, else the dataset's."""
    if cat_ids is None:
        cat_ids = ckpt.get("cat_ids") or getattr(dataset, "cat_ids", None)
    if cat_ids is None:
        raise DynaMaskError("evaluate: cannot map labels to COCO category ids (no cat_ids)")
    cat_ids = [int(c) for c in cat_ids]
    ds_cat_ids = getattr(dataset, "cat_ids", None)
    if ds_cat_ids is not None and list(ds_cat_ids) != cat_ids:
        logger.warning("the model's category ids %s differ from the validation set's %s; "
                       "labels are mapped with the model's", cat_ids, list(ds_cat_ids))
    return cat_ids


def _image_indices(dataset, max_images: Optional[int]) -> List[int]:
    """The images evaluated (the first ``max_images``)."""
    indices = list(range(len(dataset)))
    if max_images is not None:
        if max_images < 1:
            raise DynaMaskError(f"max_images must be >= 1, got {max_images}")
        indices = indices[:max_images]
    if not indices:
        raise DynaMaskError("the validation set has no images")
    return indices


def _check_sizes(dataset, indices: List[int]) -> None:
    """Image size vs json width/height (EXIF rule), as train's loading does, before the model runs."""
    if indices and hasattr(dataset, "check_image_sizes"):
        dataset.check_image_sizes(indices)


def _run_model(model, loader, dev, policy, budget, cat_ids, score_thresh: float, max_dets: int, total: int,
               progress: bool) -> Dict[str, Any]:
    """Run the model under ``policy``/``budget`` in eval mode, then restore its settings and mode.
    Returns the COCO results, image ids and sizes, the forward seconds and the settings used."""
    prev_policy, prev_budget, was_training = model.policy, model.mask_budget, model.training
    model.to(dev)
    results: List[dict] = []
    image_ids: List[int] = []
    image_sizes: Dict[int, Tuple[int, int]] = {}
    counts: List[int] = []  # detections per image
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
    return {"results": results, "image_ids": image_ids, "image_sizes": image_sizes, "counts": counts,
            "forward_s": forward_s, "policy": used_policy, "budget": used_budget}


def _metrics(gt: dict, run: Dict[str, Any], model, max_dets: int, score_thresh: float) -> Dict[str, Any]:
    """COCO APs (bbox, segm, boundary), mask cost, resolution histogram and the complexity ρ."""
    results, image_ids = run["results"], run["image_ids"]
    cpu = max(1, min(4, (os.cpu_count() or 1) // 2))
    metrics: Dict[str, Any] = dict(compute_coco_metrics(gt, results, max_dets=max_dets, img_ids=image_ids,
                                                        image_sizes=run["image_sizes"], cpu_count=cpu))
    n_img, n_det = len(image_ids), len(results)
    metrics.update(_result_statistics(gt, results, n_img))
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


def _result_statistics(gt: dict, results: Sequence[Mapping[str, Any]], n_img: int) -> Dict[str, Any]:
    """Mask cost, resolution histogram and complexity ρ from the results entries' own fields."""
    flops = [float(r["mask_flops"]) for r in results if r.get("mask_flops") is not None]
    res_cx_size = resolution_complexity_pairs(gt, results)
    rho, pairs = spearman_correlation(*res_cx_size[:2]), len(res_cx_size[0])
    rho_within, rho_by_size = spearman_within_size_bins(*res_cx_size)
    return dict(
        mask_gflops_per_instance=(sum(flops) / len(flops) / 1e9) if flops else None,
        mask_gflops_per_image=sum(flops) / n_img / 1e9,
        resolution_histogram=resolution_histogram(results),
        complexity_spearman=rho,
        complexity_spearman_within_size=rho_within,
        complexity_spearman_by_size=rho_by_size,
        complexity_pairs=pairs,
    )


# --------------------------------------------------------------------------
# a COCO results file, without a model
# --------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_results_file(path: str | os.PathLike, gt: Mapping[str, Any], gt_name: str = "the ground truth") -> List[dict]:
    """Read and check a COCO results file against the ground truth ``gt`` (a COCO dict).

    A results file is a JSON list of detections, each an object with ``image_id`` and
    ``category_id`` (integers of the gt's images and categories), ``score`` (a finite number) and
    ``bbox`` [x, y, w, h] and/or ``segmentation`` (an RLE ``{"size": [h, w], "counts": ...}`` of
    the image's size; uncompressed RLE counts are compressed here); ``mask_resolution`` and
    ``mask_flops``, when present, are an integer and a number. Anything else is a
    :class:`DynaMaskError` naming the file, the entry and the field. Returns the entries.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise DynaMaskError(f"{path}: results file not found") from None
    except IsADirectoryError:
        raise DynaMaskError(f"{path}: is a folder, not a results file") from None
    except OSError as e:
        raise DynaMaskError(f"{path}: cannot read the results file: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DynaMaskError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DynaMaskError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None
    if not isinstance(data, list):
        hint = (" (this one has 'annotations': a ground-truth file? The ground truth goes to --gt)"
                if isinstance(data, dict) and "annotations" in data else "")
        raise DynaMaskError(f"{path}: a COCO results file is a JSON list of detections, got a JSON "
                            f"{'object' if isinstance(data, dict) else type(data).__name__}{hint}")
    sizes = {int(img["id"]): (img.get("height"), img.get("width")) for img in gt.get("images", [])}
    cat_ids = {int(c["id"]) for c in gt.get("categories", [])}
    unknown_image: List[int] = []
    unknown_cat: List[int] = []
    for i, r in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(r, dict):
            raise DynaMaskError(f"{where} must be an object, got {type(r).__name__}")
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise DynaMaskError(f"{where}: missing field '{key}'")
        for key in ("image_id", "category_id"):
            if not _is_int(r[key]):
                raise DynaMaskError(f"{where}: field '{key}' must be an integer, got {r[key]!r}")
        if not _is_finite_number(r["score"]):
            raise DynaMaskError(f"{where}: field 'score' must be a finite number, got {r['score']!r}")
        if "bbox" not in r and "segmentation" not in r:
            raise DynaMaskError(f"{where}: needs a field 'bbox' or 'segmentation' (or both)")
        if "bbox" in r:
            b = r["bbox"]
            if not (isinstance(b, list) and len(b) == 4 and all(_is_finite_number(v) for v in b)
                    and b[2] >= 0 and b[3] >= 0):
                raise DynaMaskError(f"{where}: field 'bbox' must be [x, y, width, height] (4 finite numbers, "
                                    f"width and height >= 0), got {b!r}")
        if r["image_id"] not in sizes:
            unknown_image.append(i)
            continue
        if r["category_id"] not in cat_ids:
            unknown_cat.append(i)
            continue
        if "segmentation" in r:
            r["segmentation"] = _checked_rle(r["segmentation"], where, sizes[r["image_id"]], r["image_id"], gt_name)
        if r.get("mask_resolution") is not None and not _is_int(r["mask_resolution"]):
            raise DynaMaskError(f"{where}: field 'mask_resolution' must be an integer, got {r['mask_resolution']!r}")
        if r.get("mask_flops") is not None and not _is_finite_number(r["mask_flops"]):
            raise DynaMaskError(f"{where}: field 'mask_flops' must be a finite number, got {r['mask_flops']!r}")
    for bad, key, what in ((unknown_image, "image_id", "an image"), (unknown_cat, "category_id", "a category")):
        if bad:
            first = data[bad[0]]
            raise DynaMaskError(f"{path}: entry {bad[0]}: field '{key}' {first[key]} is not {what} of {gt_name} "
                                f"({len(bad)} of {len(data)} entries have {key}s that are not)")
    rle_at = [i for i, r in enumerate(data) if isinstance((r.get("segmentation") or {}).get("counts"), str)]
    for start in range(0, len(rle_at), 4096):  # in chunks: the check holds 8 bytes per character
        chunk = rle_at[start:start + 4096]
        totals = _rle_totals([data[i]["segmentation"]["counts"] for i in chunk])
        for i, total in zip(chunk, totals.tolist()):
            h, w = data[i]["segmentation"]["size"]
            if total != h * w:
                covers = "is malformed" if total < 0 else f"has runs over {total} pixels"
                raise DynaMaskError(f"{path}: entry {i}: field 'segmentation.counts' is not a compressed RLE of a "
                                    f"{h}x{w} mask (it {covers}, not {h * w})")
    return data


def _checked_rle(seg: Any, where: str, size: Tuple[Any, Any], image_id: int, gt_name: str) -> dict:
    if isinstance(seg, list):
        raise DynaMaskError(f"{where}: field 'segmentation' is a polygon list; a results file holds masks as RLE "
                            f"objects {{\"size\": [h, w], \"counts\": ...}}")
    if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
        raise DynaMaskError(f"{where}: field 'segmentation' must be an RLE object with 'size' and 'counts', "
                            f"got {str(seg)[:80]}")
    hw = seg["size"]
    if not (isinstance(hw, list) and len(hw) == 2 and all(_is_int(v) and v >= 0 for v in hw)):
        raise DynaMaskError(f"{where}: field 'segmentation.size' must be [height, width], got {hw!r}")
    h, w = size
    if h and w and [int(h), int(w)] != hw:
        raise DynaMaskError(f"{where}: field 'segmentation.size' {hw} is not the size of image {image_id} "
                            f"in {gt_name} ([height, width] = [{h}, {w}])")
    counts = seg["counts"]
    if isinstance(counts, list):  # uncompressed RLE: compress it (pycocotools reads only compressed RLE here)
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
            raise DynaMaskError(f"{where}: field 'segmentation.counts' (uncompressed RLE) must be non-negative "
                                f"integers summing to height x width = {hw[0] * hw[1]}")
        rle = mask_utils.frPyObjects(seg, hw[0], hw[1])
        return {"size": hw, "counts": rle["counts"].decode("ascii")}
    if not isinstance(counts, str):
        raise DynaMaskError(f"{where}: field 'segmentation.counts' must be a string (compressed RLE) or a list "
                            f"of integers, got {type(counts).__name__}")
    return seg


def _rle_totals(counts: Sequence[str]) -> np.ndarray:
    """The pixel total (sum of the run lengths) of each compressed-RLE string in pycocotools'
    format, -1 where a string is malformed: a character outside ``'0'..'o'``, a number
    left unfinished at its end, one over 60 bits, a negative run. pycocotools does not check
    (it would read past the string or write past the mask), so a results file is checked here,
    all strings at once (vectorised: about 20 µs per string)."""
    n = len(counts)
    if n == 0:
        return np.zeros(0, np.int64)
    lens = np.fromiter((len(c) for c in counts), np.int64, count=n)
    try:
        raw = "".join(counts).encode("ascii")
    except UnicodeEncodeError:  # find the strings that are not ASCII, the rest is checked as usual
        ascii_ok = np.fromiter((c.isascii() for c in counts), bool, count=n)
        out = np.full(n, -1, np.int64)
        if ascii_ok.any():
            out[ascii_ok] = _rle_totals([c for c, ok in zip(counts, ascii_ok) if ok])
        return out
    bad = np.zeros(n, bool)
    if not raw:  # only empty strings: no runs (a 0-pixel mask)
        return np.zeros(n, np.int64)
    b = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    owner = np.repeat(np.arange(n), lens)
    bad[owner[(b < 0) | (b > 63)]] = True
    b = np.clip(b, 0, 63)
    more = (b & 0x20) != 0
    last = (np.cumsum(lens) - 1)[lens > 0]
    bad[owner[last[more[last]]]] = True  # ends inside a number
    end_flag = ~more
    end_flag[last] = True  # numbers never run on into the next string (that string is bad already)
    ends = np.flatnonzero(end_flag)
    starts = np.concatenate(([0], ends[:-1] + 1))
    glen = ends - starts + 1
    bad[owner[ends[glen > 12]]] = True  # over 60 bits
    group = np.repeat(np.arange(len(ends)), glen)
    k = np.minimum(np.arange(b.size) - starts[group], 12)
    x = np.zeros(len(ends), np.int64)
    np.add.at(x, group, (b & 0x1f) << (5 * k))
    neg = (b[ends] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * np.minimum(glen[neg], 12))
    gowner = owner[ends]
    idx = np.arange(len(ends)) - np.searchsorted(gowner, np.arange(n))[gowner]  # number's index in its string
    # run i is x[i] + run[i - 2] from i = 3 on: cumulative sums per (string, odd / even from 2), run 0 alone
    key = gowner * 3 + np.where(idx == 0, 0, 1 + (idx % 2))
    order = np.argsort(key, kind="stable")
    xs = x[order]
    cs = np.cumsum(xs)
    first = np.r_[True, key[order][1:] != key[order][:-1]]
    base = np.maximum.accumulate(np.where(first, np.arange(len(xs)), 0))
    runs = np.empty_like(x)
    runs[order] = cs - (cs[base] - xs[base])
    bad[gowner[runs < 0]] = True
    totals = np.zeros(n, np.int64)
    np.add.at(totals, gowner, runs)
    return np.where(bad, -1, totals)


def evaluate_results(
    results: str | os.PathLike,
    gt: str | os.PathLike,
    out_dir: Optional[str | os.PathLike] = None,
    max_dets: int = 100,
) -> Dict[str, Any]:
    """The metrics of a COCO results file (e.g. another model's detections, or a
    ``coco_results.json`` that :func:`evaluate` wrote) against the ground-truth file ``gt``,
    without a model: the APs of :func:`compute_coco_metrics` over every gt image (an image
    without detections counts its gt as missed, as in COCO's protocol; ``max_dets`` best per
    image), and from the entries' own fields the resolution histogram and mask GFLOPs
    (``mask_resolution``, ``mask_flops``; None when no entry has them) and the complexity ρ.
    The keys of the model's run (policy, budget, speed) are None; ``results_file`` and
    ``gt_file`` name the inputs. With ``out_dir``, writes ``metrics.json`` there. Bad input is a
    :class:`DynaMaskError` naming the file, the entry and the field (:func:`load_results_file`).
    """
    from ..data import load_coco_json

    gt_path = os.fspath(gt)
    gt_data = load_coco_json(gt_path)
    entries = load_results_file(results, gt_data, gt_path)
    sizes: Dict[int, Tuple[int, int]] = {}
    for r in entries:  # gt images without height/width: the size of their masks
        if "segmentation" in r:
            sizes.setdefault(int(r["image_id"]), tuple(int(v) for v in r["segmentation"]["size"]))
    if any("segmentation" in r for r in entries):
        with_anns = {int(a["image_id"]) for a in gt_data["annotations"]}
        for img in gt_data["images"]:
            if (not img.get("height") or not img.get("width")) and int(img["id"]) not in sizes \
                    and int(img["id"]) in with_anns:
                raise DynaMaskError(f"{gt_path}: image {img['id']} has no 'height'/'width' and no detection in "
                                    f"{os.fspath(results)} gives its size; mask AP needs it")
    lacking = sum(1 for r in entries if "segmentation" not in r)
    if entries and lacking:
        logger.warning("%s: %d of %d entries have no 'segmentation': no mask or boundary AP", os.fspath(results),
                       lacking, len(entries))
    lacking = sum(1 for r in entries if "bbox" not in r)
    if entries and lacking:
        logger.warning("%s: %d of %d entries have no 'bbox': no box AP", os.fspath(results), lacking, len(entries))
    cpu = max(1, min(4, (os.cpu_count() or 1) // 2))
    metrics: Dict[str, Any] = dict(compute_coco_metrics(gt_data, entries, max_dets=max_dets, image_sizes=sizes,
                                                        cpu_count=cpu))
    n_img = len(gt_data["images"])
    metrics.update(_result_statistics(gt_data, entries, n_img))
    if not any(r.get("mask_flops") is not None for r in entries):
        metrics["mask_gflops_per_image"] = None
    metrics.update(images_per_second=None, num_images=n_img, num_detections=len(entries), policy=None,
                   mask_budget=None, mask_score_floor=None, mask_geometry=None, max_dets=int(max_dets),
                   score_thresh=None, results_file=os.path.abspath(os.fspath(results)),
                   gt_file=os.path.abspath(gt_path))
    metrics = {k: metrics[k] for k in (*METRIC_KEYS, "results_file", "gt_file")}
    if out_dir is not None:
        os.makedirs(os.fspath(out_dir), exist_ok=True)
        write_metrics_json(os.path.join(os.fspath(out_dir), "metrics.json"), metrics)
    return metrics


# --------------------------------------------------------------------------
# table
# --------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of a metrics dict (APs 0–100) for the command line."""
    hist = metrics.get("resolution_histogram") or {}
    hist = {int(k): v for k, v in hist.items()}
    total = sum(hist.values())

    def pct(r):
        return f"{hist.get(r, 0)} ({100.0 * hist.get(r, 0) / total:.0f}%)" if total else str(hist.get(r, 0))

    rows: List[Tuple[str, str]] = []
    rows.append(("", ""))
    rows.append(("AP (0-100)", "AP      AP50    AP75    APs     APm     APl"))
    for kind in ("bbox", "segm", "boundary"):
        vals = [metrics.get(f"{kind}_{k}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        rows.append((kind, "  ".join(f"{_fmt(v):<6}" for v in vals).rstrip()))
    rows.append(("", ""))
    from_file = metrics.get("results_file") is not None  # evaluate --results: no model ran
    if from_file:
        rows.append(("results", str(metrics["results_file"])))
    else:
        rows.append(("policy", f"{metrics.get('policy')} (mask budget {_fmt(metrics.get('mask_budget'))}, "
                               f"mask geometry {metrics.get('mask_geometry')})"))
    rows.append(("mask GFLOPs / instance", _fmt(metrics.get("mask_gflops_per_instance"), 4)))
    rows.append(("mask GFLOPs / image", _fmt(metrics.get("mask_gflops_per_image"), 4)))
    rows.append(("resolutions", "  ".join(f"{r}: {pct(r)}" for r in RESOLUTIONS)))
    rho = metrics.get("complexity_spearman")
    pairs = metrics.get("complexity_pairs")
    rows.append(("resolution~complexity rho", _fmt(rho, 3) + (f" ({pairs} matched)" if pairs is not None else "")))
    rows.append(("  within size bins", _fmt(metrics.get("complexity_spearman_within_size"), 3)))
    if not from_file:
        rows.append(("images / s (forward)", _fmt(metrics.get("images_per_second"))))
    rows.append(("images, detections", f"{metrics.get('num_images')}, {metrics.get('num_detections')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows).strip("\n")
