"""COCO evaluation of a dynamask model: the model loop over a validation set, single or sharded.

:func:`evaluate` runs a model over a COCO-format validation set and returns (and, with
``out_dir``, writes) a metrics dict. Scoring the detections is :mod:`dynamask.evaluation`'s
(:func:`~dynamask.evaluation.coco_eval.compute_coco_metrics`: box, mask and boundary AP, exact to
pycocotools, on flat arrays and every core; the switch statistics of
:mod:`dynamask.evaluation.statistics`); its public names are re-exported here so that existing
imports keep working. All AP values are on the **0–100** scale.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..cocotools import mask_utils
from ..errors import DynaMaskError
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
    result_statistics,
    spearman_correlation,
    spearman_within_size_bins,
)
from ..inference import apply_policy, model_from_checkpoint, resolve_device
from ..progress import progress_bar
from . import distributed as du

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

logger = logging.getLogger("dynamask.evaluate")


# --------------------------------------------------------------------------
# predictions → COCO results
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    if not (shard and du.is_dist()):
        job = _prepare(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
        _check_sizes(job["dataset"], job["indices"])
        run = _run_model(
            job["model"],
            _loader(job, job["indices"]),
            job["dev"],
            policy,
            budget,
            job["cat_ids"],
            job["score_thresh"],
            job["max_dets"],
            len(job["indices"]),
            progress,
        )
        return _measure_and_write(job, run, out_dir, progress=progress)
    return _evaluate_sharded(
        cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress, batch_size, cat_ids
    )


def _prepare(cfg, weights, model, dataset, max_images, device, batch_size: int, cat_ids) -> dict[str, Any]:
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
    return {
        "model": model,
        "cfg": cfg,
        "dataset": dataset,
        "cat_ids": cat_ids,
        "indices": indices,
        "dev": dev,
        "max_dets": int(test_cfg["max_dets"]),
        "score_thresh": float(test_cfg["score_thresh"]),
        "batch_size": int(batch_size),
        "num_workers": int((cfg.get("data") or {}).get("num_workers", 0) or 0),
    }


def _loader(job: dict[str, Any], indices: list[int]):
    from ..data import collate_fn

    dataset = job["dataset"]
    subset = dataset if indices == list(range(len(dataset))) else torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(
        subset, batch_size=job["batch_size"], shuffle=False, num_workers=job["num_workers"], collate_fn=collate_fn
    )


def _measure_and_write(
    job: dict[str, Any], run: dict[str, Any], out_dir, processes: int = 1, progress: bool = False
) -> dict[str, Any]:
    """coco_results.json, the metrics, metrics.json."""
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


def _evaluate_sharded(
    cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress, batch_size, cat_ids
) -> dict[str, Any]:
    """:func:`evaluate` inside a process group: this process runs the model on its shard (whole
    batches dealt out in turn, :func:`~dynamask.engine.distributed.shard_positions`), rank 0
    gathers the detections, puts them in the single-process order, computes the metrics and
    writes the files, and every process returns rank 0's metrics. A failure on any process
    raises on every process (at the same step, so none waits for the others)."""
    rank, world = du.get_rank(), du.get_world_size()
    failure: BaseException | None = None
    job: dict[str, Any] = {}
    mine: list[int] = []
    try:
        job = _prepare(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
        mine = [job["indices"][p] for p in du.shard_positions(len(job["indices"]), rank, world, batch_size)]
        _check_sizes(job["dataset"], mine)  # every image checked once, by the process that loads it
    except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every process
        failure = exc
    du.agree_on_failure(failure, "evaluate")

    payload: tuple[str | None, dict | None]
    try:
        run = _run_model(
            job["model"],
            _loader(job, mine),
            job["dev"],
            policy,
            budget,
            job["cat_ids"],
            job["score_thresh"],
            job["max_dets"],
            len(mine),
            progress and rank == 0,
        )
        payload = (None, run)
    except Exception as exc:  # noqa: BLE001
        failure, payload = exc, (f"{type(exc).__name__}: {exc}", None)
    gathered = du.gather_object(payload)
    del payload
    status: tuple[str, Any, Any] = ("ok", None, None)
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
                metrics = _measure_and_write(job, run, out_dir, processes=world, progress=progress)
                logger.info(
                    "evaluated %d image(s) on %d processes (%s image(s) each); images_per_second: all "
                    "images over the slowest process's forward time",
                    n,
                    world,
                    "/".join(str(len(s)) for s in shards),
                )
                status = ("ok", None, metrics)
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
            status = ("failed", 0, f"{type(exc).__name__}: {exc}")
    return du.settle_on_rank0_status(status, failure, "evaluate")[2]


def _merge_runs(runs: Sequence[dict[str, Any]], shards: Sequence[Sequence[int]], n: int) -> dict[str, Any]:
    """The processes' runs as one, images (and their detections) in the single-process order;
    ``forward_s`` is the slowest process's."""
    per_position: list[Any] = [None] * n
    for run, shard in zip(runs, shards):
        k = 0
        for position, image_id, count in zip(shard, run["image_ids"], run["counts"]):
            per_position[position] = (image_id, run["results"][k : k + count])
            k += count
    results = [r for _, rs in per_position for r in rs]
    image_ids = [image_id for image_id, _ in per_position]
    sizes: dict[int, tuple[int, int]] = {}
    for run in runs:
        sizes.update(run["image_sizes"])
    return {
        "results": results,
        "image_ids": image_ids,
        "image_sizes": {i: sizes[i] for i in image_ids},
        "counts": [len(rs) for _, rs in per_position],
        "forward_s": max(run["forward_s"] for run in runs),
        "policy": runs[0]["policy"],
        "budget": runs[0]["budget"],
    }


def _validation_dataset(cfg: dict):
    """``data.val_json`` / ``data.val_images`` as a dataset without transforms (images as stored)."""
    data_cfg = cfg.get("data") or {}
    val_json, val_images = data_cfg.get("val_json"), data_cfg.get("val_images")
    if not val_json or not val_images:
        raise DynaMaskError(
            "no validation set: set data.val_json and data.val_images "
            "(in the config or as data.val_json=... on the command line)"
        )
    if not os.path.isdir(val_images):
        raise DynaMaskError(f"data.val_images: {val_images!r} is not a folder")
    from ..data import CocoInstanceDataset

    return CocoInstanceDataset(val_json, val_images, transforms=None, keep_empty=True, validate_masks=False)


def _category_ids(cat_ids, ckpt: dict, dataset) -> list[int]:
    """Label → COCO category id: as given, else the checkpoint's, else the dataset's."""
    if cat_ids is None:
        cat_ids = ckpt.get("cat_ids") or getattr(dataset, "cat_ids", None)
    if cat_ids is None:
        raise DynaMaskError("evaluate: cannot map labels to COCO category ids (no cat_ids)")
    cat_ids = [int(c) for c in cat_ids]
    ds_cat_ids = getattr(dataset, "cat_ids", None)
    if ds_cat_ids is not None and list(ds_cat_ids) != cat_ids:
        logger.warning(
            "the model's category ids %s differ from the validation set's %s; labels are mapped with the model's",
            cat_ids,
            list(ds_cat_ids),
        )
    return cat_ids


def _image_indices(dataset, max_images: int | None) -> list[int]:
    """The images evaluated (the first ``max_images``)."""
    indices = list(range(len(dataset)))
    if max_images is not None:
        if max_images < 1:
            raise DynaMaskError(f"max_images must be >= 1, got {max_images}")
        indices = indices[:max_images]
    if not indices:
        raise DynaMaskError("the validation set has no images")
    return indices


def _check_sizes(dataset, indices: list[int]) -> None:
    """Image size vs json width/height (EXIF rule), as train's loading does, before the model runs."""
    if indices and hasattr(dataset, "check_image_sizes"):
        dataset.check_image_sizes(indices)


def _run_model(
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
