"""``dynamask demo``: the offline first run, on a CPU.

Generates the synthetic shapes dataset, trains the CPU DynaMask config and the Mask R-CNN
baseline, evaluates both (and the DynaMask model under other policies and test-time budgets),
and writes ``report.md`` with the metric table, a plot of mask AP against mask-head FLOPs and an
overlay gallery.

Training either model from random init to a useful accuracy takes about an hour of CPU, more
than a first run should. When the repository's ``checkpoints/`` folder has the two small models
that ``dynamask train`` produced from ``configs/shapes_*_r18.yaml`` (configs, logs and the
command are next to them), the demo starts from those and fine-tunes each for a short while at the
schedule's final learning rate; otherwise it trains from scratch with the configs' full
schedules. ``--quick`` is a smoke run of the whole pipeline on a tiny dataset (for tests): its
numbers mean nothing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..atomic import write_bytes_atomic
from ..config import load_config
from ..errors import DynaMaskError
from ..inference import checkpoint_geometry, load_checkpoint

logger = logging.getLogger("dynamask.demo")

REPO_ROOT = Path(__file__).resolve().parents[3]
HEADS = {"dynamask": "shapes_dynamask_r18", "maskrcnn": "shapes_maskrcnn_r18"}
# The dataset the shipped checkpoints were trained on (same generator, same seed).
FULL_DATA = dict(num_train=1000, num_val=100, image_size=128, seed=0)
QUICK_DATA = dict(num_train=12, num_val=4, image_size=64, seed=0)
FINE_TUNE_ITERS = 100
# Evaluations of the DynaMask model: (name, policy, test-time budget).
DYNAMASK_EVALS = [("DynaMask dynamic", "dynamic", None), ("DynaMask dynamic, budget 0.5", "dynamic", 0.5),
                  ("DynaMask dynamic, budget 0.25", "dynamic", 0.25), ("DynaMask fixed-112", "fixed-112", None),
                  ("DynaMask fixed-28", "fixed-28", None)]
QUICK_EVALS = DYNAMASK_EVALS[:2]


def shipped_checkpoint(head: str) -> Path | None:
    path = REPO_ROOT / "checkpoints" / f"{HEADS[head]}.pt"
    return path if path.is_file() else None


def _config(head: str, data_dir: Path, out_dir: Path, quick: bool) -> dict:
    config_path = REPO_ROOT / "configs" / f"{HEADS[head]}.yaml"
    if not config_path.is_file():
        raise DynaMaskError(f"{config_path}: the demo needs the repository's configs/ folder "
                            "(install with `pip install -e .` from a clone)")
    overrides = {
        "data.train_json": str(data_dir / "train.json"), "data.train_images": str(data_dir / "train"),
        "data.val_json": str(data_dir / "val.json"), "data.val_images": str(data_dir / "val"),
        "output_dir": str(out_dir), "test.eval_period": 0,
    }
    checkpoint = shipped_checkpoint(head)
    if quick:
        overrides.update({
            "solver.max_iter": 4, "solver.warmup_iters": 2, "solver.steps": [], "solver.checkpoint_period": 0,
            "solver.ims_per_batch": 2, "solver.reference_batch": 2, "input.min_size": 64, "input.max_size": 64,
            "model.rpn_pre_nms_top_n_train": 100, "model.rpn_post_nms_top_n_train": 50,
            "model.rpn_pre_nms_top_n_test": 50, "model.rpn_post_nms_top_n_test": 20,
            "model.box_batch_size_per_image": 32, "model.box_detections_per_img": 20, "model.mask_rois_per_image": 4,
        })
    elif checkpoint is not None:
        base = load_config(config_path)
        final_lr = base["solver"]["base_lr"] * base["solver"]["gamma"] ** len(base["solver"]["steps"])
        overrides.update({
            "model.init_weights": str(checkpoint), "solver.max_iter": FINE_TUNE_ITERS, "solver.base_lr": final_lr,
            "solver.warmup_iters": 0, "solver.steps": [], "solver.checkpoint_period": 0,
            # fine-tuning keeps the geometry the checkpoint was trained in (100 iterations cannot
            # move its masks by the half pixel another geometry would ask for)
            "model.mask_geometry": checkpoint_geometry(load_checkpoint(str(checkpoint))),
        })
    return load_config(config_path, overrides)


def _row(name: str, metrics: dict) -> dict:
    keys = ("segm_AP", "segm_AP50", "segm_AP75", "boundary_AP", "bbox_AP", "mask_gflops_per_instance",
            "images_per_second")
    return {"name": name, **{k: metrics.get(k) for k in keys}, "resolution_histogram": metrics.get("resolution_histogram"),
            "complexity_spearman": metrics.get("complexity_spearman")}


def _fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def _gallery(weights: Path, val_dir: Path, val_json: Path, path: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    from ..predictor import Predictor
    from ..visualize import draw_overlay, save_gallery

    with open(val_json) as f:
        files = [im["file_name"] for im in json.load(f)["images"]][:count]
    predictor = Predictor(str(weights), score_thresh=0.5)
    overlays = []
    for name in files:
        image = np.asarray(Image.open(val_dir / name).convert("RGB"))
        overlays.append(draw_overlay(image, predictor.predict(image), predictor.class_names, 0.5,
                                     min_display_size=256))
    save_gallery(overlays, path, cols=4)


def run_demo(out_dir: str | os.PathLike = "runs/demo", quick: bool = False, progress: bool = True) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    from ..data import generate_shapes_dataset
    from ..visualize import plot_ap_vs_flops
    from .evaluate import evaluate
    from .train import train

    start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data_spec = QUICK_DATA if quick else FULL_DATA
    data_dir = out / "shapes"
    logger.info("demo: generating the shapes dataset in %s", data_dir)
    generate_shapes_dataset(data_dir, **data_spec)

    weights, sources, configs = {}, {}, {}
    for head in HEADS:
        cfg = _config(head, data_dir, out / head, quick)
        init = cfg["model"].get("init_weights")
        sources[head] = (f"fine-tuned for {cfg['solver']['max_iter']} iterations from the shipped "
                         f"`checkpoints/{HEADS[head]}.pt` (mask geometry `{cfg['model']['mask_geometry']}`)" if init else
                         f"trained from random init for {cfg['solver']['max_iter']} iterations")
        if not quick and not init:
            logger.warning("demo: no shipped checkpoint for %s; training from scratch (%d iterations, about "
                           "an hour on 2 CPU cores)", head, cfg["solver"]["max_iter"])
        logger.info("demo: %s model, %s", head, sources[head])
        configs[head] = cfg
        # The demo evaluates after training; no extra evaluation inside train().
        train_cfg = {**cfg, "data": {**cfg["data"], "val_json": None, "val_images": None}}
        summary = train(train_cfg, out_dir=str(out / head), progress=progress)
        weights[head] = Path(summary["model_final"])

    rows = []
    evals = QUICK_EVALS if quick else DYNAMASK_EVALS
    for name, policy, budget in evals:
        metrics = evaluate(configs["dynamask"], weights=str(weights["dynamask"]), out_dir=str(out / "eval" / name.lower().replace(" ", "_").replace(",", "")),
                           policy=policy, budget=budget, progress=progress)
        rows.append(_row(name, metrics))
    metrics = evaluate(configs["maskrcnn"], weights=str(weights["maskrcnn"]), out_dir=str(out / "eval" / "maskrcnn"), progress=progress)
    rows.append(_row("Mask R-CNN (28×28 head)", metrics))

    plot_path = out / "ap_vs_flops.png"
    plot_ap_vs_flops([{"name": r["name"], "gflops": r["mask_gflops_per_instance"], "segm_AP": r["segm_AP"],
                       "boundary_AP": r["boundary_AP"]} for r in rows if r["mask_gflops_per_instance"] is not None],
                     plot_path, title="shapes val: mask AP against mask-head cost")
    gallery_path = out / "gallery.png"
    _gallery(weights["dynamask"], data_dir / "val", data_dir / "val.json", gallery_path, 4 if quick else 8)

    results = {"rows": rows, "sources": sources, "quick": quick, "seconds": time.time() - start}
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    report = out / "report.md"
    write_bytes_atomic(report, _report(rows, sources, quick, data_spec, time.time() - start).encode("utf-8"))
    logger.info("demo: done in %.0f s; report: %s", time.time() - start, report)
    return report


def _report(rows: list[dict], sources: dict, quick: bool, data_spec: dict, seconds: float) -> str:
    dyn = rows[0]
    base = rows[-1]
    lines = ["# dynamask demo report", ""]
    if quick:
        lines += ["**Quick mode**: a smoke run of the whole pipeline on a tiny dataset with a few training "
                  "iterations. The numbers below mean nothing.", ""]
    lines += [
        f"Data: synthetic shapes, {data_spec['num_train']} training and {data_spec['num_val']} validation images "
        f"of {data_spec['image_size']}×{data_spec['image_size']} px (seed {data_spec['seed']}), 8 categories "
        "(3 with simple outlines, 5 with complex ones).",
        "",
        f"- DynaMask (ResNet-18-FPN, CPU config `configs/shapes_dynamask_r18.yaml`): {sources['dynamask']}.",
        f"- Mask R-CNN baseline (`configs/shapes_maskrcnn_r18.yaml`, same detector): {sources['maskrcnn']}.",
        "",
        "| model | segm AP | AP50 | AP75 | boundary AP | bbox AP | mask GFLOPs / instance | chosen 14/28/56/112 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        hist = r["resolution_histogram"] or {}
        lines.append(f"| {r['name']} | {_fmt(r['segm_AP'])} | {_fmt(r['segm_AP50'])} | {_fmt(r['segm_AP75'])} | "
                     f"{_fmt(r['boundary_AP'])} | {_fmt(r['bbox_AP'])} | {_fmt(r['mask_gflops_per_instance'], 3)} | "
                     f"{'/'.join(str(hist.get(str(k), hist.get(k, 0))) for k in (14, 28, 56, 112))} |")
    if dyn["boundary_AP"] is not None and base["boundary_AP"] is not None:
        gap = dyn["boundary_AP"] - base["boundary_AP"]
        verdict = "ahead of" if gap > 0 else "level with" if gap == 0 else "behind"
        lines += ["", f"DynaMask (dynamic) is **{verdict}** the Mask R-CNN baseline in boundary AP by "
                      f"{abs(gap):.1f} points ({dyn['boundary_AP']:.1f} vs {base['boundary_AP']:.1f}), at "
                      f"{_fmt(dyn['mask_gflops_per_instance'], 3)} vs {_fmt(base['mask_gflops_per_instance'], 3)} "
                      "mask-head GFLOPs per instance."]
    if dyn.get("complexity_spearman") is not None:
        lines += [f"Spearman ρ between the chosen resolution and the outline complexity of the matched object: "
                  f"{dyn['complexity_spearman']:.2f}."]
    lines += ["", "APs are COCO-style (0–100) on the validation split; boundary AP is faster-coco-eval's "
              "boundary IoU type. Budgets are the test-time dial (`model.mask_budget`), no retraining.", "",
              "![AP against mask FLOPs](ap_vs_flops.png)", "",
              "Overlays (outline colour = chosen mask resolution):", "", "![gallery](gallery.png)", "",
              f"Wall time: {seconds:.0f} s.", ""]
    return "\n".join(lines)
