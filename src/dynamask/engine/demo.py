"""``dynamask demo``: the offline first run on a CPU — today's model, evaluated, no training.

It starts from the files shipped in ``checkpoints/`` (see ``checkpoints/README.md`` for how they
were trained): one ResNet-18-FPN detector trained on the detailed shapes of the benchmark, and two
mask heads trained on it while it stayed frozen — DynaMask (cost switch, calibrated on a held-out
split) and the Mask R-CNN 28×28 head of the same width. Every row of the report therefore has the
same boxes: the table compares mask heads alone.

Rows: DynaMask ``dynamic`` with no budget and at two test-time budgets inside the reachable range
(between the cheapest stage's share and the unconstrained cost, evenly spaced); the same head at
``fixed-28`` and ``fixed-112``; the same head at ``fixed-112`` with the detections scoring under a
floor stopped at 14×14, the floor set so that it costs what ``dynamic`` costs (the control: does
the switch beat spending the same FLOPs by detector score alone?); and ``Mask R-CNN``. The verdict
sentences are computed from the numbers. ``--quick`` evaluates a handful of images (a smoke run:
its numbers are noisy).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_bytes_atomic
from ..errors import DynaMaskError

logger = logging.getLogger("dynamask.demo")

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED = {
    "detector": "shapes_detail_detector_r18.pt",
    "dynamask": "shapes_detail_dynamask_c64.pt",
    "maskrcnn": "shapes_detail_maskrcnn_c64.pt",
}
#: the first images of the benchmark's validation split (same generator, seed and size)
DATA = dict(image_size=256, seed=0, detail=True)
FULL_VAL, QUICK_VAL = 200, 4
FULL_GALLERY, QUICK_GALLERY = 8, 2
#: a gap (points, or relative cost) below this is reported as level
LEVEL = 0.05
#: row names of the shipped DynaMask head run at one resolution, and score-gated at equal cost
FIXED_28, FIXED_112, GATED_112 = "fixed-28 (same head)", "fixed-112 (same head)", "fixed-112 score-gated (same head)"


def shipped_files(folder: os.PathLike | None = None) -> dict[str, Path]:
    """The shipped detector and heads; one error naming every missing file and how to make it."""
    folder = Path(folder) if folder is not None else REPO_ROOT / "checkpoints"
    files = {k: folder / name for k, name in SHIPPED.items()}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DynaMaskError(
            f"the demo starts from the shipped checkpoints and these are missing: {', '.join(missing)} "
            f"(run it from a clone of the repository; checkpoints/README.md has the commands that "
            f"make them)"
        )
    return files


def dial_budgets(lowest: float, unconstrained: float) -> list[float]:
    """Two budgets evenly spaced inside (lowest, unconstrained), highest first; none when the
    switch already chooses (almost) the cheapest mix and the dial has no room."""
    if unconstrained - lowest < 0.03:
        return []
    return [round(lowest + (unconstrained - lowest) * k / 3, 3) for k in (2, 1)]


def gallery_images(val_json: os.PathLike, count: int) -> list[str]:
    """File names of the validation images that best show both kinds of outline: ranked by the
    smaller of (largest simple object, largest detailed object), sizes √(w·h) of their boxes
    (a thin detailed object is large by its box, not by its area)."""
    with open(val_json) as f:
        data = json.load(f)
    detail = {c["id"] for c in data["categories"] if c.get("supercategory") == "detail"}
    best: dict[int, dict[bool, float]] = {}
    for a in data["annotations"]:
        side = math.sqrt(float(a["bbox"][2]) * float(a["bbox"][3]))
        kinds = best.setdefault(a["image_id"], {True: 0.0, False: 0.0})
        kinds[a["category_id"] in detail] = max(kinds[a["category_id"] in detail], side)
    names = {im["id"]: im["file_name"] for im in data["images"]}
    score = {i: min(k[True], k[False]) for i, k in best.items()}
    ranked = sorted(names, key=lambda i: (-score.get(i, 0.0), i))
    return [names[i] for i in ranked[:count]]


# ---------------------------------------------------------------------------------------- verdicts


def _gap(a: float, b: float, unit: str) -> str:
    d = a - b
    if abs(d) < LEVEL:
        return f"level in {unit} ({a:.1f} vs {b:.1f})"
    return f"{'ahead' if d > 0 else 'behind'} by {abs(d):.1f} {unit} ({a:.1f} vs {b:.1f})"


def verdict_sentences(rows: Sequence[dict]) -> list[str]:
    """The report's conclusions, each computed from the rows (name, segm_AP, boundary_AP,
    bbox_AP, mask_gflops_per_instance, complexity ρ): which is ahead, by how much, at what cost."""
    by = {r["name"]: r for r in rows}
    out = []
    boxes = [r["bbox_AP"] for r in rows if r.get("bbox_AP") is not None]
    if boxes:
        spread = max(boxes) - min(boxes)
        out.append(
            f"Every row has the same detector (bbox AP {boxes[0]:.1f}), so the rows differ in their masks only."
            if spread < LEVEL
            else f"The rows' bbox AP differs by {spread:.1f} ({min(boxes):.1f}–{max(boxes):.1f}): part of each "
            f"gap below comes from the boxes."
        )
    dyn, mrcnn, full, gated = by.get("dynamic"), by.get("Mask R-CNN"), by.get(FIXED_112), by.get(GATED_112)
    for other, label in (
        (mrcnn, "the Mask R-CNN head"),
        (full, "the same head at 112×112 for every instance (fixed-112)"),
        (
            gated,
            "the same head at 112×112 above a detector-score floor and 14×14 below it, "
            "at equal cost (score-gated fixed-112)",
        ),
    ):
        if dyn is None or other is None or None in (dyn["segm_AP"], other["segm_AP"]):
            continue
        cost = dyn["mask_gflops_per_instance"] / other["mask_gflops_per_instance"]
        out.append(
            f"DynaMask (dynamic) against {label}: {_gap(dyn['segm_AP'], other['segm_AP'], 'segm AP')}, "
            f"{_gap(dyn['boundary_AP'], other['boundary_AP'], 'boundary AP')}, at {cost:.2f}× its mask-head "
            f"FLOPs ({dyn['mask_gflops_per_instance']:.3f} vs {other['mask_gflops_per_instance']:.3f} "
            f"GFLOPs per instance)."
        )
    dial = [r for r in rows if r["name"].startswith("dynamic, budget")]
    if dyn is not None and dial:
        parts = []
        for r in dial:
            saved = 1 - r["mask_gflops_per_instance"] / dyn["mask_gflops_per_instance"]
            parts.append(
                f"{r['name'][len('dynamic, ') :]} costs {abs(saved) * 100:.0f} % "
                f"{'less' if saved >= 0 else 'more'} ({r['mask_gflops_per_instance']:.3f} GFLOPs) for "
                f"{r['segm_AP'] - dyn['segm_AP']:+.1f} segm AP and {r['boundary_AP'] - dyn['boundary_AP']:+.1f} "
                f"boundary AP"
            )
        costs = [dyn["mask_gflops_per_instance"]] + [r["mask_gflops_per_instance"] for r in dial]
        monotone = all(a > b for a, b in zip(costs, costs[1:]))
        out.append(
            "The test-time dial, against no budget: "
            + "; ".join(parts)
            + "."
            + ("" if monotone else " The dial did not lower the cost at every step.")
        )
    elif dyn is not None:
        out.append("The switch already chooses (almost) the cheapest mix: the test-time dial has no room below it.")
    if dyn is not None and dyn.get("complexity_spearman") is not None:
        within = dyn.get("complexity_spearman_within_size")
        out.append(
            f"Spearman ρ between the chosen resolution and the outline complexity of the matched object: "
            f"{dyn['complexity_spearman']:.2f}"
            + (f"; within object-size bins {within:.2f}." if within is not None else ".")
        )
    return out


# ---------------------------------------------------------------------------------------- the run


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name.lower()).strip("_")


def _row(name: str, metrics: dict, budget: float | None = None) -> dict:
    keys = (
        "segm_AP",
        "segm_AP50",
        "segm_AP75",
        "boundary_AP",
        "bbox_AP",
        "mask_gflops_per_instance",
        "images_per_second",
        "complexity_spearman",
        "complexity_spearman_within_size",
    )
    hist = metrics.get("resolution_histogram") or {}
    return {
        "name": name,
        "budget": budget,
        **{k: metrics.get(k) for k in keys},
        "resolution_histogram": {str(k): int(v) for k, v in hist.items()},
    }


def _evaluate_rows(files: dict[str, Path], dataset, out: Path, progress: bool) -> tuple[list, dict]:
    """Every row of the table, and the dial's reachable range."""
    import torch

    from ..inference import model_from_checkpoint
    from ..models.policy import score_floor_for_cost
    from .evaluate import evaluate

    dyn_model, dyn_ckpt = model_from_checkpoint(str(files["dynamask"]))
    head = dyn_model.roi_heads.mask_branch

    def run(name, policy, budget=None, model=dyn_model, cfg=dyn_ckpt["config"]):
        logger.info("demo: evaluating %s", name)
        metrics = evaluate(
            cfg,
            model=model,
            dataset=dataset,
            out_dir=str(out / "eval" / _slug(name)),
            policy=policy,
            budget=budget,
            progress=progress,
        )
        return _row(name, metrics, budget)

    rows = [run("dynamic", "dynamic")]
    lowest = head.smallest_budget()
    full_cost = float(head.stage_costs(with_switch=True).max())
    unconstrained = (
        rows[0]["mask_gflops_per_instance"] * 1e9 / full_cost if rows[0]["mask_gflops_per_instance"] else 0.0
    )
    for budget in dial_budgets(lowest, unconstrained):
        rows.append(run(f"dynamic, budget {budget:g}", "dynamic", budget))
    rows += [run(FIXED_28, "fixed-28"), run(FIXED_112, "fixed-112")]
    # the control at the dynamic row's cost: its detections' scores decide who gets 112 or 14
    costs = head.stage_costs(with_switch=False).double() / 1e9
    scores = torch.tensor(
        [float(r["score"]) for r in json.loads((out / "eval" / _slug("dynamic") / "coco_results.json").read_text())]
    )
    target = rows[0]["mask_gflops_per_instance"] or 0.0
    dyn_model.mask_score_floor = score_floor_for_cost(scores, float(costs[0]), float(costs[-1]), target)
    try:
        rows.append(run(GATED_112, "fixed-112") | {"score_floor": dyn_model.mask_score_floor})
    finally:
        dyn_model.mask_score_floor = 0.0
    mrcnn_model, mrcnn_ckpt = model_from_checkpoint(str(files["maskrcnn"]))
    rows.append(run("Mask R-CNN", None, model=mrcnn_model, cfg=mrcnn_ckpt["config"]))
    return rows, {"lowest": lowest, "unconstrained": unconstrained}


def run_demo(
    out_dir: str | os.PathLike = "runs/demo",
    quick: bool = False,
    progress: bool = True,
    checkpoints: os.PathLike | None = None,
    val_images: int | None = None,
) -> Path:
    """Run the demo; returns the path of ``report.md``."""
    from ..data import CocoInstanceDataset, generate_shapes_dataset
    from ..visualize import plot_ap_vs_flops

    start = time.time()
    files = shipped_files(checkpoints)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_val = val_images or (QUICK_VAL if quick else FULL_VAL)
    data_dir = out / "shapes"
    logger.info("demo: the first %d validation images of the detailed shapes benchmark in %s", n_val, data_dir)
    data = generate_shapes_dataset(data_dir, 0, n_val, **DATA)
    dataset = CocoInstanceDataset(
        data["val_json"], data["val_dir"], transforms=None, keep_empty=True, validate_masks=False
    )
    rows, reachable = _evaluate_rows(files, dataset, out, progress)

    plot_ap_vs_flops(
        [
            {
                "name": r["name"],
                "gflops": r["mask_gflops_per_instance"],
                "segm_AP": r["segm_AP"],
                "boundary_AP": r["boundary_AP"],
                "line": r["name"].startswith("dynamic"),
            }
            for r in rows
            if r["mask_gflops_per_instance"] is not None
        ],
        out / "ap_vs_flops.png",
        title=f"detailed shapes, {n_val} validation images: mask AP against mask-head cost (one detector)",
    )
    _gallery(
        files["dynamask"],
        Path(data["val_dir"]),
        Path(data["val_json"]),
        out / "gallery.png",
        QUICK_GALLERY if quick else FULL_GALLERY,
    )
    seconds = time.time() - start
    results = {
        "rows": rows,
        "verdicts": verdict_sentences(rows),
        "dial_reachable_range": reachable,
        "val_images": n_val,
        "quick": quick,
        "seconds": seconds,
        "checkpoints": {
            k: os.path.relpath(p, REPO_ROOT) if REPO_ROOT in p.parents else str(p) for k, p in files.items()
        },
    }
    write_bytes_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    report = out / "report.md"
    write_bytes_atomic(report, _report(results).encode("utf-8"))
    logger.info("demo: done in %.0f s; report: %s", seconds, report)
    return report


def _gallery(weights: Path, val_dir: Path, val_json: Path, path: Path, count: int) -> None:
    import numpy as np
    from PIL import Image

    from ..predictor import Predictor
    from ..visualize import draw_overlay, save_gallery

    predictor = Predictor(str(weights), score_thresh=0.5)
    overlays = []
    for name in gallery_images(val_json, count):
        image = np.asarray(Image.open(val_dir / name).convert("RGB"))
        overlays.append(draw_overlay(image, predictor.predict(image), predictor.class_names, 0.5, min_display_size=512))
    save_gallery(overlays, path, cols=4)


def _fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def _report(results: dict) -> str:
    rows = results["rows"]
    lines = ["# dynamask demo report", ""]
    if results["quick"]:
        lines += [
            f"**Quick mode**: {results['val_images']} validation images only — a smoke run of the pipeline; "
            "the numbers are noisy.",
            "",
        ]
    lines += [
        f"Data: the first {results['val_images']} validation images of the detailed shapes benchmark (256×256, seed 0; "
        "`benchmarks/accuracy_vs_cost_256.py`): 8 simple and 6 detailed categories (thin limbs, spokes, combs, "
        "branches, holes, strokes).",
        "",
        "Models: the shipped files, no training here — "
        + ", ".join(f"`{p}`" for p in results["checkpoints"].values())
        + " (how they were trained: `checkpoints/README.md`). Both heads run on the same frozen "
        "ResNet-18-FPN detector.",
        "",
        "| model | segm AP | AP50 | AP75 | boundary AP | bbox AP | mask GFLOPs / instance | chosen 14/28/56/112 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        hist = r["resolution_histogram"] or {}
        lines.append(
            f"| {r['name']} | {_fmt(r['segm_AP'])} | {_fmt(r['segm_AP50'])} | {_fmt(r['segm_AP75'])} | "
            f"{_fmt(r['boundary_AP'])} | {_fmt(r['bbox_AP'])} | {_fmt(r['mask_gflops_per_instance'], 3)} | "
            f"{'/'.join(str(hist.get(str(k), 0)) for k in (14, 28, 56, 112))} |"
        )
    reach = results["dial_reachable_range"]
    floors = [r["score_floor"] for r in rows if r.get("score_floor") is not None]
    lines += [
        "",
        *[f"- {s}" for s in results["verdicts"]],
        "",
        *(
            [
                f"The score-gated row stops every detection scoring under {floors[0]:.3f} at 14×14 "
                f"(`model.mask_score_floor`, chosen so that the row costs what `dynamic` costs) and gives the rest "
                f"112×112.",
                "",
            ]
            if floors
            else []
        ),
        f"Budgets are the test-time dial (`model.mask_budget`: the mean mask cost as a fraction of the full "
        f"112×112 path, no retraining); this head reaches from {reach['lowest']:.3f} (every instance at 14×14) "
        f"to {reach['unconstrained']:.3f} (its own choices), and the two budgets are evenly spaced inside. "
        "APs are COCO-style (0–100); boundary AP is faster-coco-eval's boundary IoU type.",
        "",
        "![AP against mask FLOPs](ap_vs_flops.png)",
        "",
        "Validation images with both simple and detailed large objects (outline colour = chosen mask resolution):",
        "",
        "![gallery](gallery.png)",
        "",
        f"Wall time: {results['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)
