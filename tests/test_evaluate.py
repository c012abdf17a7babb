"""COCO evaluation path: gt-as-detections sanity check, crowd handling, evaluate() end to end."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from dynamask.config import load_config
from dynamask.data import CocoInstanceDataset, generate_shapes_dataset
from dynamask.engine.evaluate import (
    AP_KEYS,
    METRIC_KEYS,
    compute_coco_metrics,
    evaluate,
    format_metrics_table,
    masks_to_rles,
    resolution_complexity_spearman,
    spearman_correlation,
)
from dynamask.errors import DynaMaskError
from dynamask.models import build_model

REQUIRED = [
    "bbox_AP",
    "segm_AP",
    "segm_AP50",
    "segm_AP75",
    "segm_APs",
    "segm_APm",
    "segm_APl",
    "boundary_AP",
    "mask_gflops_per_instance",
    "mask_gflops_per_image",
    "resolution_histogram",
    "images_per_second",
    "num_images",
    "num_detections",
    "policy",
    "mask_budget",
    "complexity_spearman",
]


def _tiny_cfg(shapes, **over):
    base = {
        "model.backbone": "resnet18",
        "model.fam": "conv",
        "input.min_size": 64,
        "input.max_size": 64,
        "data.val_json": shapes["val_json"],
        "data.val_images": shapes["val_dir"],
        "data.num_workers": 0,
        "model.box_score_thresh": 0.0,
        "model.rpn_pre_nms_top_n_test": 100,
        "model.rpn_post_nms_top_n_test": 40,
        "model.box_detections_per_img": 8,
        "test.max_dets": 8,
        "test.score_thresh": 0.0,
    }
    base.update(over)
    return load_config(None, base)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes_eval")
    return generate_shapes_dataset(root, 2, 6, image_size=64)


@pytest.fixture(scope="module")
def gt(shapes):
    with open(shapes["val_json"]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory):
    cfg = _tiny_cfg(shapes)
    ds = CocoInstanceDataset(shapes["val_json"], shapes["val_dir"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes + 1)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ds.class_names,
            "cat_ids": ds.cat_ids,
            "num_classes": ds.num_classes + 1,
            "iteration": 0,
        },
        path,
    )
    return str(path)


def _gt_as_results(gt, transform=None):
    results = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        seg = ann["segmentation"]
        if transform is not None:
            with warnings.catch_warnings():  # pycocotools' NumPy-2 __array__ DeprecationWarning
                warnings.simplefilter("ignore", DeprecationWarning)
                m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            seg = masks_to_rles(transform(m)[None])[0]
        results.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": list(ann["bbox"]),
                "score": 1.0,
                "segmentation": seg,
            }
        )
    return results


def _shift_and_erode(m):
    import cv2

    m = np.roll(m, (3, 3), axis=(0, 1))
    return cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=1)


# ---------------------------------------------------------------- results → metrics
def test_ground_truth_as_detections_scores_100(gt):
    before = copy.deepcopy(gt)
    results = _gt_as_results(gt)
    results_before = copy.deepcopy(results)
    m = compute_coco_metrics(gt, results, max_dets=100)
    assert set(m) == set(AP_KEYS)
    for key in ("bbox_AP", "segm_AP", "segm_AP50", "segm_AP75", "boundary_AP"):
        assert m[key] == pytest.approx(100.0, abs=1e-6), key
    # neither the gt nor the results are modified by the evaluators (they get new dicts, not deep copies)
    assert gt == before and results == results_before


def test_polygon_ground_truth_is_not_modified(gt):
    """pycocotools turns gt polygons into RLEs on its own dicts: the caller's polygons stay."""
    import cv2

    gt = copy.deepcopy(gt)
    for ann in gt["annotations"][::2]:
        seg = ann["segmentation"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        ann["segmentation"] = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    before = copy.deepcopy(gt)
    assert not any(a.get("iscrowd") for a in gt["annotations"])  # one result per annotation, in order
    results = _gt_as_results(before)  # polygons as detections would not do: rasterise them the gt's way
    for r, ann in zip(results, before["annotations"]):
        if isinstance(ann["segmentation"], list):
            img = next(i for i in gt["images"] if i["id"] == ann["image_id"])
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], img["height"], img["width"]))
            r["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    m = compute_coco_metrics(gt, results, max_dets=100)
    assert m["segm_AP"] == pytest.approx(100.0) and m["boundary_AP"] == pytest.approx(100.0)
    assert gt == before


def test_degraded_masks_score_clearly_lower(gt):
    good = compute_coco_metrics(gt, _gt_as_results(gt), max_dets=100)
    bad = compute_coco_metrics(gt, _gt_as_results(gt, _shift_and_erode), max_dets=100)
    assert bad["segm_AP"] < good["segm_AP"] - 30
    assert bad["boundary_AP"] < good["boundary_AP"] - 30
    # boxes are unchanged, so box AP stays perfect
    assert bad["bbox_AP"] == pytest.approx(100.0)


def test_custom_max_dets_and_empty_results(gt):
    m = compute_coco_metrics(gt, _gt_as_results(gt), max_dets=5)  # pycocotools' summarize() assumes 100
    assert m["segm_AP"] == pytest.approx(100.0)
    empty = compute_coco_metrics(gt, [], max_dets=7)
    for key in ("bbox_AP", "segm_AP", "boundary_AP"):
        assert empty[key] == 0.0


def test_crowd_regions_are_ignored(gt):
    gt = copy.deepcopy(gt)
    img = gt["images"][0]
    h, w = img["height"], img["width"]
    crowd = np.zeros((h, w), np.uint8)
    crowd[:10, :10] = 1  # a crowd region nobody detects ...
    rle = masks_to_rles(crowd[None])[0]
    gt["annotations"].append(
        {
            "id": 10_000,
            "image_id": img["id"],
            "category_id": gt["categories"][0]["id"],
            "segmentation": rle,
            "area": 100.0,
            "bbox": [0, 0, 10, 10],
            "iscrowd": 1,
        }
    )
    results = _gt_as_results(gt)
    # ... and a detection lying on it: neither a miss nor a false positive
    results.append(
        {
            "image_id": img["id"],
            "category_id": gt["categories"][0]["id"],
            "bbox": [0, 0, 10, 10],
            "score": 0.99,
            "segmentation": rle,
        }
    )
    m = compute_coco_metrics(gt, results, max_dets=100)
    assert m["segm_AP"] == pytest.approx(100.0)
    assert m["bbox_AP"] == pytest.approx(100.0)
    assert m["boundary_AP"] == pytest.approx(100.0)


def test_spearman_and_complexity_matching(gt):
    assert spearman_correlation([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_correlation([1, 1, 1], [1, 2, 3]) is None
    results = _gt_as_results(gt)
    cx = {(a["image_id"], a["bbox"][0], a["bbox"][1]): a["complexity"] for a in gt["annotations"]}
    order = sorted(cx.values())
    for r in results:  # resolution rising with complexity → rho == 1
        rank = order.index(cx[(r["image_id"], r["bbox"][0], r["bbox"][1])])
        r["mask_resolution"] = rank
    rho, pairs = resolution_complexity_spearman(gt, results)
    assert pairs == len(results)
    assert rho == pytest.approx(1.0)


def test_spearman_within_size_bins_ignores_size_alone():
    from dynamask.engine.evaluate import spearman_within_size_bins

    g = np.random.default_rng(0)
    sizes = g.uniform(10, 250, 400)
    complexity = g.uniform(1, 5, 400) + sizes / 50.0  # bigger objects are a bit more complex
    by_size = np.digitize(sizes, [48, 96, 160]) * 28.0  # a "switch" that follows size alone
    rho, bins = spearman_within_size_bins(by_size, complexity, sizes)
    assert rho is None and all(b["rho"] is None for b in bins.values())
    assert sum(b["pairs"] for b in bins.values()) == 400
    by_outline = np.where(complexity - sizes / 50.0 > 3, 112.0, 28.0)  # follows the outline within a size
    rho, bins = spearman_within_size_bins(by_outline, complexity, sizes)
    assert rho > 0.6 and list(bins) == ["0-48", "48-96", "96-160", "160-inf"]


# ---------------------------------------------------------------- evaluate()
def test_evaluate_end_to_end(checkpoint, tmp_path):
    out = tmp_path / "eval"
    metrics = evaluate(weights=checkpoint, out_dir=out, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED + list(METRIC_KEYS):
        assert key in saved, key
    assert saved["num_images"] == 6
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == saved["num_detections"] > 0
    hist = saved["resolution_histogram"]
    assert set(hist) == {"14", "28", "56", "112"}
    assert sum(hist.values()) == saved["num_detections"]
    r = results[0]
    assert {"image_id", "category_id", "bbox", "score", "segmentation", "mask_resolution", "mask_flops"} <= set(r)
    assert isinstance(r["segmentation"]["counts"], str) and len(r["bbox"]) == 4
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 8  # test.max_dets
    assert saved["policy"] == "dynamic" and saved["mask_budget"] == 1.0
    assert saved["images_per_second"] > 0
    gflops = sum(r["mask_flops"] for r in results) / 1e9
    assert saved["mask_gflops_per_image"] == pytest.approx(gflops / 6)
    assert saved["mask_gflops_per_instance"] == pytest.approx(gflops / len(results))
    for key in ("bbox_AP", "segm_AP", "boundary_AP"):
        assert 0.0 <= saved[key] <= 100.0
    assert metrics["resolution_histogram"] == {int(k): v for k, v in hist.items()}
    table = format_metrics_table(saved)
    assert "segm" in table and "boundary" in table and "112" in table


def test_evaluate_policy_budget_and_max_images(checkpoint, shapes, capsys):
    cfg = _tiny_cfg(shapes)
    ds = CocoInstanceDataset(shapes["val_json"], shapes["val_dir"])
    from dynamask.inference import model_from_checkpoint

    model, _ = model_from_checkpoint(checkpoint)
    m = evaluate(cfg=cfg, model=model, dataset=ds, policy="fixed-14", max_images=2, progress=True)
    err = capsys.readouterr().err  # not a terminal: plain progress lines, no bar redraws
    lines = [line for line in err.splitlines() if line.startswith("evaluate: ")]
    assert "\r" not in err and 1 <= len(lines) <= 2 and lines[-1].startswith("evaluate: 2/2 img (100 %)"), err
    assert m["num_images"] == 2 and m["policy"] == "fixed-14"
    assert m["resolution_histogram"][14] == m["num_detections"] > 0
    assert model.policy == "dynamic"  # restored afterwards
    m = evaluate(cfg=cfg, model=model, dataset=ds, budget=0.3, max_images=2, progress=False)
    assert m["mask_budget"] == pytest.approx(0.3)
    assert model.mask_budget == pytest.approx(1.0)


def test_evaluate_no_detections(checkpoint, shapes, tmp_path):
    cfg = _tiny_cfg(shapes, **{"model.box_score_thresh": 1.0})  # torchvision keeps score > thresh: none
    metrics = evaluate(cfg=cfg, weights=checkpoint, out_dir=tmp_path, max_images=3, progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_detections"] == 0
    assert json.loads((tmp_path / "coco_results.json").read_text()) == []
    for key in ("bbox_AP", "segm_AP", "segm_AP50", "segm_AP75", "boundary_AP"):
        assert saved[key] == 0.0
    assert sum(saved["resolution_histogram"].values()) == 0
    assert saved["mask_gflops_per_instance"] is None and saved["mask_gflops_per_image"] == 0.0
    assert saved["complexity_spearman"] is None
    assert metrics["num_images"] == 3
    format_metrics_table(metrics)


def test_evaluate_errors(shapes):
    cfg = _tiny_cfg(shapes, **{"data.val_json": None})
    ds = CocoInstanceDataset(shapes["val_json"], shapes["val_dir"])
    model = build_model(cfg, ds.num_classes + 1)
    with pytest.raises(DynaMaskError, match="val_json"):
        evaluate(cfg=cfg, model=model, progress=False)
    fixed = build_model(_tiny_cfg(shapes, **{"model.policy": "fixed-28"}), ds.num_classes + 1)
    with pytest.raises(DynaMaskError, match="fixed-56"):
        evaluate(cfg=cfg, model=fixed, dataset=ds, policy="fixed-56", progress=False)
    with pytest.raises(DynaMaskError):
        evaluate(cfg=cfg, progress=False)  # neither weights nor model
