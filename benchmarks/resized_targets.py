"""Resolution must survive the resize: mask heads trained on *resized* data, with today's targets
(mask bitmaps resized with the image) against targets taken from the original-resolution masks.

Protocol (issue 23; BENCHMARKS.md states the run's numbers):

* data: the detailed shapes of the 256-px benchmark's generator and seed (0), rendered at
  **512 px** (``--train`` + ``--val`` images, made if missing), so every image is shrunk 2× on its
  way into the network (input 256), as real photos are;
* model-free first: the round trip of the validation ground truth through the real training
  pipeline (dataset transform + the model's transform + the target code; targets pasted back on
  the 512-px image) at 28/56/112 for ``resized`` and ``original`` targets, beside the native round
  trip (no resize) — down to input 256 and up to 800/1333 (``round_trip`` in the JSON);
* one detector for all heads: the shipped float16 ``checkpoints/shapes_detail_detector_r18.pt``
  (trained at 256 px on the 256-px renders), frozen;
* heads as in the 256-px benchmark (r-FPN, stage-14 width 64, balanced ratios), ``--iters``
  iterations each: ``fixed-28`` and ``fixed-112`` with targets from the original masks, and
  ``fixed-28-resized`` / ``fixed-112-resized`` with ``model.mask_targets=resized``;
* evaluated against the 512-px ground truth: segm AP, boundary AP, bbox AP, mask GFLOPs/instance.

    python benchmarks/resized_targets.py --quick       # plumbing only, minutes, numbers meaningless
    python benchmarks/resized_targets.py               # the run (about 3-4 CPU-hours on 2 cores)
    python benchmarks/resized_targets.py --save-partial  # keep unfinished heads in the repository

Trained heads are kept as float16 head files referencing the detector in
``benchmarks/results/resized_targets_heads/`` (not trained again), unfinished ones with
``--save-partial`` as ``NAME.partial.pt`` (restored bit for bit and resumed by the next run), each
head's evaluation beside it. Writes ``benchmarks/results/resized_targets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import accuracy_vs_cost as base  # noqa: E402  (training / evaluation helpers)
import accuracy_vs_cost_256 as b256  # noqa: E402  (head files, partial state, widths)

RENDER_SIZE = 512
INPUT_SIZE = 256
RESOLUTIONS = (28, 56, 112)
ORDER = ("fixed-28-resized", "fixed-28", "fixed-112-resized", "fixed-112")
#: heads whose weights the repository no longer keeps (tracked files stay under 40 MiB); their
#: evaluation, config, metrics and log stay in --heads and the table reads NAME.eval.json
#: (accuracy_vs_cost_256.RETIRED does the same). Deleting that file too trains the head again.
RETIRED = ("fixed-28-resized", "fixed-28")


def retired(args, name: str) -> bool:
    return name in RETIRED and not b256.head_file(args, name).exists() and (args.heads / f"{name}.eval.json").exists()


def runs(detector: str, width: int) -> list[dict]:
    """The four head trainings: fixed-112 pair first (the slowest, and the goal's), then fixed-28."""
    common = [
        f"model.detector_weights={detector}",
        "model.freeze_detector=true",
        "model.mask_geometry=exact",
        "model.head=dynamask",
        "model.refinement=dense",
        f"model.head_widths=[{','.join(map(str, b256.head_widths(width)))}]",
        f"input.min_size={INPUT_SIZE}",
        f"input.max_size={INPUT_SIZE}",
    ]
    specs = []
    for r in (112, 28):
        for targets in ("resized", "original"):
            name = f"fixed-{r}" + ("-resized" if targets == "resized" else "")
            specs.append(
                {
                    "name": name,
                    "config": str(b256.DETECTOR_CONFIG),
                    "evals": [(name, f"fixed-{r}")],
                    "overrides": common + [f"model.policy=fixed-{r}", f"model.mask_targets={targets}"],
                }
            )
    return specs


def round_trip(data: Path, images: int) -> dict:
    """Model-free: mean IoU of the first ``images`` validation images' masks through the training
    pipeline and back, per direction (down to input 256, up to 800/1333) and target source, beside
    the native round trip."""
    import numpy as np
    import torch
    from PIL import Image
    from pycocotools.coco import COCO

    from dynamask.evaluation.resize_round_trip import native_round_trip_iou, pipeline_round_trip_iou

    coco = COCO(str(data / "val.json"))
    settings = {"down_256": (INPUT_SIZE, INPUT_SIZE), "up_800": (800, 1333)}
    acc = {"native": {r: [] for r in RESOLUTIONS}}
    acc.update({f"{d}_{t}": {r: [] for r in RESOLUTIONS} for d in settings for t in ("resized", "original")})
    n = 0
    for image_id in coco.getImgIds()[:images]:
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        if not anns:
            continue
        info = coco.loadImgs([image_id])[0]
        image = torch.from_numpy(np.asarray(Image.open(data / "val" / info["file_name"]).convert("RGB"))).permute(
            2, 0, 1
        )
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]))
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=torch.float64,
        )
        native = native_round_trip_iou(masks, boxes, RESOLUTIONS)
        for r in RESOLUTIONS:
            acc["native"][r].append(native[r])
        for d, (lo, hi) in settings.items():
            for t in ("resized", "original"):
                out, kept = pipeline_round_trip_iou(
                    image, masks, boxes, min_size=lo, max_size=hi, mask_targets=t, resolutions=RESOLUTIONS
                )
                if kept.numel() != masks.shape[0]:
                    raise SystemExit(f"round trip: image {image_id} lost instances in the pipeline")
                for r in RESOLUTIONS:
                    acc[f"{d}_{t}"][r].append(out[r])
        n += 1
    result = {
        "images": n,
        "instances": int(sum(len(v) for v in acc["native"][RESOLUTIONS[0]])),
        "render_size": RENDER_SIZE,
    }
    for key, per_r in acc.items():
        result[key] = {str(r): round(float(np.concatenate(v).mean()), 4) for r, v in per_r.items()}
    # the names: resized / original targets at the benchmark's input size
    result["resized"], result["original"] = result["down_256_resized"], result["down_256_original"]
    result["max_gap_original_vs_native"] = round(
        max(abs(result[f"{d}_original"][str(r)] - result["native"][str(r)]) for d in settings for r in RESOLUTIONS), 4
    )
    return result


def judge(models: dict, trip: dict) -> dict:
    def bnd(name):
        return models[name]["boundary_AP"] if name in models else None

    gain = (
        None
        if bnd("fixed-112") is None or bnd("fixed-112-resized") is None
        else bnd("fixed-112") - bnd("fixed-112-resized")
    )
    fine = None if bnd("fixed-112") is None or bnd("fixed-28") is None else bnd("fixed-112") - bnd("fixed-28")
    return {
        "round_trip_max_gap_to_native": trip["max_gap_original_vs_native"],
        "goal_round_trip_within_0.005": bool(trip["max_gap_original_vs_native"] <= 0.005),
        "fixed112_minus_fixed112_resized_boundary": gain,
        "goal_original_targets_plus_3_boundary": None if gain is None else bool(gain >= 3),
        "fixed112_minus_fixed28_boundary": fine,
        "goal_fixed112_minus_fixed28_at_least_7.6_boundary": None if fine is None else bool(fine >= 7.6),
    }


def markdown(result: dict) -> str:
    t = result["round_trip"]
    rows = [
        "| targets | input | IoU at 28 | 56 | 112 |",
        "|---|---|---:|---:|---:|",
        "| native (no resize) | 512 | " + " | ".join(f"{t['native'][str(r)]:.3f}" for r in RESOLUTIONS) + " |",
    ]
    for d, label in (("down_256", "256 (2× down)"), ("up_800", "800/1333 (up)")):
        for k in ("resized", "original"):
            rows.append(f"| {k} | {label} | " + " | ".join(f"{t[f'{d}_{k}'][str(r)]:.3f}" for r in RESOLUTIONS) + " |")
    models = [
        "| model | mask targets | segm AP | boundary AP | bbox AP | mask GFLOPs/inst | training s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    walls = result.get("train_wall_s") or {}
    for name, m in result["models"].items():
        w = walls.get(name)
        models.append(
            f"| {name.removesuffix('-resized')} | {'resized' if name.endswith('-resized') else 'original'} "
            f"| {m['segm_AP']:.1f} | {m['boundary_AP']:.1f} | {m['bbox_AP']:.1f} "
            f"| {m['mask_gflops_per_instance']:.3f} | {'—' if w is None else format(w, '.0f')} |"
        )
    return "\n".join(rows) + "\n\n" + "\n".join(models)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="512-px detailed shapes (default runs/shapes_detail_512)")
    p.add_argument("--train", type=int, default=2000, help="training images when the dataset is made")
    p.add_argument("--val", type=int, default=400, help="validation images when the dataset is made")
    p.add_argument("--round-trip-images", type=int, default=100, help="validation images of the model-free round trip")
    p.add_argument("--detector", type=Path, default=b256.SHIPPED_DETECTOR, help="frozen detector all heads share")
    p.add_argument(
        "--heads", type=Path, default=None, help="head files (default benchmarks/results/resized_targets_heads)"
    )
    p.add_argument(
        "--save-partial",
        action="store_true",
        help="train nothing: keep every unfinished head's state in --heads (NAME.partial.pt)",
    )
    p.add_argument("--eval-only", action="store_true", help="train nothing: evaluate the head files there are")
    p.add_argument("--round-trip-only", action="store_true", help="only the model-free round trip")
    p.add_argument("--iters", type=int, default=1500, help="training iterations per head")
    p.add_argument("--width", type=int, default=64, help="r-FPN stage-14 width")
    p.add_argument("--out", type=Path, default=None, help="training runs (default runs/resized_targets)")
    p.add_argument(
        "--results", type=Path, default=None, help="results JSON (default benchmarks/results/resized_targets.json)"
    )
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training")
    p.add_argument("--quick", action="store_true", help="tiny run to check the plumbing (numbers meaningless)")
    args = p.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    if args.quick:
        args.iters, args.train, args.val, args.round_trip_images = min(args.iters, 4), 8, 6, 3
    args.data = args.data or ROOT / "runs" / f"shapes_detail_512{suffix}"
    args.out = args.out or ROOT / "runs" / f"resized_targets{suffix}"
    args.results = args.results or (
        args.out / "resized_targets.json" if args.quick else HERE / "results" / "resized_targets.json"
    )
    args.heads = args.heads or (args.out / "heads" if args.quick else HERE / "results" / "resized_targets_heads")
    args.final_eval = False

    started = time.time()
    if not (args.data / "val.json").exists():
        from dynamask.data import generate_shapes_dataset

        print(
            f"[data] making {args.data} ({args.train} train, {args.val} val, {RENDER_SIZE} px, seed 0, detail)",
            flush=True,
        )
        generate_shapes_dataset(args.data, args.train, args.val, image_size=RENDER_SIZE, seed=0, detail=True)
    trip_file = args.heads / "round_trip.json"
    if trip_file.exists() and json.loads(trip_file.read_text()).get("images") == args.round_trip_images:
        trip = json.loads(trip_file.read_text())
    else:
        trip = round_trip(args.data, args.round_trip_images)
        args.heads.mkdir(parents=True, exist_ok=True)
        trip_file.write_text(json.dumps(trip, indent=1) + "\n")
    print(
        "[round trip] "
        + json.dumps({k: trip[k] for k in ("native", "resized", "original", "up_800_resized", "up_800_original")}),
        flush=True,
    )
    if args.round_trip_only:
        return
    detector = args.detector
    specs = runs(str(detector), args.width)
    if args.save_partial:
        for spec in specs:
            if (
                not b256.head_file(args, spec["name"]).exists()
                and (args.out / spec["name"] / "checkpoint_last.pt").exists()
            ):
                b256.save_partial(args, detector, spec["name"])
        return
    for spec in specs:
        name = spec["name"]
        if (
            not b256.head_file(args, name).exists()
            and b256.partial_file(args, name).exists()
            and not (args.out / name / "checkpoint_last.pt").exists()
        ):
            b256.restore_partial(args, detector, name)
    if not args.eval_only:
        base.train_all(
            specs,
            args,
            args.out,
            finished=lambda spec: b256.head_file(args, spec["name"]).exists() or retired(args, spec["name"]),
            on_done=lambda spec: b256.keep_head(args, detector, spec),
        )
    ready = [s for s in specs if b256.head_file(args, s["name"]).exists() or retired(args, s["name"])]
    walls = {}
    for spec in ready:
        spec["weights"] = b256.head_file(args, spec["name"])
        wall_file = args.heads / f"{spec['name']}.wall.json"
        walls[spec["name"]] = json.loads(wall_file.read_text())["train_wall_s"] if wall_file.exists() else None
    models, _ = base.evaluate_all(ready, args, args.out, cache=lambda spec: args.heads / f"{spec['name']}.eval.json")
    models = {n: models[n] for n in ORDER if n in models}
    result = {
        "protocol": {
            "detector": os.path.relpath(detector, ROOT),
            "detector_frozen": True,
            "render_size": RENDER_SIZE,
            "input_size": INPUT_SIZE,
            "iterations_per_head": args.iters,
            "head_width": args.width,
            "r_fpn_widths": b256.head_widths(args.width),
            "dataset": os.path.relpath(args.data, ROOT),
            "val_images": args.val,
            "quick": args.quick,
            "schedule": base.schedule(args.iters),
            "mask_geometry": "exact",
            "head_files": os.path.relpath(args.heads, ROOT),
            "heads_missing": [s["name"] for s in specs if s not in ready],
        },
        **base.run_record(args, started, walls),
        "round_trip": trip,
        "models": models,
        "goals": judge(models, trip),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(json.dumps(result["goals"], indent=1))
    print(f"wrote {args.results} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
