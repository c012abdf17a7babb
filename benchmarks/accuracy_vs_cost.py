"""Mask accuracy against mask-head cost for every resolution policy, on one detector.

Protocol (CPU-sized, stated in BENCHMARKS.md): one trained detector — backbone, FPN, RPN and
box head of a shipped shapes checkpoint — is frozen, and every mask head is trained on it from
scratch for the same number of iterations with the same data, seed and optimiser:

* ``maskrcnn``      torchvision's Mask R-CNN head (28×28), same width as the shipped baseline;
* ``fixed-14/28/56`` r-FPN heads built with 1 / 2 / 3 stages;
* ``fixed-112``     the full r-FPN (all four stages). The size rule is a test-time policy on this
                    same model (training is identical: every stage deep-supervised, no switch);
* ``dynamic@t``     r-FPN + Mask Switch Module trained with budget target t ∈ {0.2, 0.4, 0.6}.

Every model is evaluated on the same validation split (COCO segm / boundary AP, mask GFLOPs per
instance, resolution histogram, Spearman ρ between chosen resolution and outline complexity),
then the test-time dial sweeps ``mask_budget`` 0.1 … 1.0 on the dynamic@0.4 model without
retraining. Training runs are separate processes (``--jobs`` at a time, ``--threads`` each);
a finished run is reused when the script is run again, an interrupted one resumes.

Every head is trained and evaluated in one mask geometry (``--mask-geometry``, default the
models' default ``exact``; ``torchvision`` is Mask R-CNN's legacy geometry, see
``src/dynamask/models/geometry.py``). Beside the results the script reports the model-free
ceiling: the validation ground truth cropped to its own box at 14/28/56/112 and pasted back, in
both geometries (mean mask IoU, all objects and objects under 32 px) — no head can beat it.

    python benchmarks/accuracy_vs_cost.py                 # ~1 h on a 2-core CPU
    python benchmarks/accuracy_vs_cost.py --mask-geometry torchvision   # the legacy-geometry run
    python benchmarks/accuracy_vs_cost.py --quick         # minutes: plumbing only, numbers meaningless

Writes ``benchmarks/results/accuracy_vs_cost.json`` and ``.png`` (``--results`` to change;
``accuracy_vs_cost_legacy_geometry.json`` for ``--mask-geometry torchvision``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from dynamask.atomic import atomic_path, write_bytes_atomic  # noqa: E402

# The 128-px detector of the published numbers was shipped in checkpoints/ until issue 13 retired
# it (the detailed-shapes detector replaced it); git keeps it:
RETIRED_DETECTOR = "git show 5bd680a:checkpoints/shapes_dynamask_r18.pt > runs/shapes_dynamask_r18_shipped.pt"

DYNAMIC_TARGETS = (0.2, 0.4, 0.6)
DIAL = tuple(round(0.1 * i, 1) for i in range(1, 11))
DIAL_MODEL = "dynamic@0.4"
GEOMETRIES = ("exact", "torchvision")
RESOLUTIONS = (14, 28, 56, 112)
METRIC_KEYS = (
    "segm_AP",
    "segm_AP50",
    "segm_AP75",
    "segm_APs",
    "segm_APm",
    "segm_APl",
    "boundary_AP",
    "bbox_AP",
    "mask_gflops_per_instance",
    "resolution_histogram",
    "complexity_spearman",
    "complexity_pairs",
    "complexity_spearman_within_size",
    "complexity_spearman_by_size",
    "num_detections",
)


def runs(detector: str, geometry: str) -> list[dict]:
    """Training runs (name, config, overrides) and the evaluations made from each."""
    common = [
        f"model.detector_weights={detector}",
        "model.freeze_detector=true",
        f"model.mask_geometry={geometry}",
        "model.refinement=dense",
    ]
    dyn_cfg = str(ROOT / "configs" / "shapes_dynamask_r18.yaml")
    out = [
        {
            "name": "maskrcnn",
            "config": str(ROOT / "configs" / "shapes_maskrcnn_r18.yaml"),
            "overrides": common,
            "evals": [("maskrcnn", None)],
        },
        {
            "name": "fixed-112",
            "config": dyn_cfg,
            "overrides": common + ["model.policy=fixed-112"],
            "evals": [("fixed-112", "fixed-112"), ("size", "size")],
        },
    ]
    for r in (56, 28, 14):
        out.append(
            {
                "name": f"fixed-{r}",
                "config": dyn_cfg,
                "overrides": common + [f"model.policy=fixed-{r}"],
                "evals": [(f"fixed-{r}", f"fixed-{r}")],
            }
        )
    for t in DYNAMIC_TARGETS:
        out.append(
            {
                "name": f"dynamic@{t}",
                "config": dyn_cfg,
                "overrides": common + ["model.policy=dynamic", f"model.mask_budget_target={t}"],
                "evals": [(f"dynamic@{t}", "dynamic")],
            }
        )
    return out


def schedule(iters: int) -> list[str]:
    """Same optimiser as the shapes configs, the LR steps moved to 75 % / 90 % of the run."""
    steps = sorted({max(1, int(iters * 0.75)), max(1, int(iters * 0.9))})
    warmup = min(100, max(1, iters // 10))
    return [
        f"solver.max_iter={iters}",
        f"solver.steps=[{','.join(map(str, steps))}]",
        f"solver.warmup_iters={warmup}",
        f"solver.checkpoint_period={max(50, iters // 4)}",
        "test.eval_period=0",
    ]


def train_all(specs, args, out_dir: Path, finished=None, on_done=None) -> dict:
    """Run the trainings ``args.jobs`` at a time; returns wall seconds per run (0 = reused).

    ``finished(spec)`` says a head needs no training (default: its ``model_final.pt`` exists);
    ``on_done(spec)`` runs as each training ends. Each training evaluates on the validation split
    at its end unless ``args.final_eval`` is false (a benchmark that evaluates every head itself
    afterwards saves that time)."""
    finished = finished or (lambda spec: (out_dir / spec["name"] / "model_final.pt").exists())
    val = (
        [f"data.val_json={args.data / 'val.json'}", f"data.val_images={args.data / 'val'}"]
        if getattr(args, "final_eval", True)
        else ["data.val_json=null", "data.val_images=null"]
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    pending, running, walls = list(specs), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            spec = pending.pop(0)
            run_dir = out_dir / spec["name"]
            if finished(spec):
                print(f"[train] {spec['name']}: trained before, reused", flush=True)
                walls[spec["name"]] = 0.0
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "dynamask",
                "train",
                "--config",
                spec["config"],
                "--out",
                str(run_dir),
                "--device",
                "cpu",
                "--no-progress",
                *spec["overrides"],
                *schedule(args.iters),
                f"data.train_json={args.data / 'train.json'}",
                f"data.train_images={args.data / 'train'}",
                *val,
            ]
            if (run_dir / "checkpoint_last.pt").exists():
                cmd.append("--resume")
            log = open(run_dir / "train.log", "a")
            print(f"[train] {spec['name']}: started ({' '.join(cmd[3:])})", flush=True)
            running.append(
                (spec, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), time.time(), log)
            )
        time.sleep(2)
        for item in list(running):
            spec, proc, started, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                for _, other, _, _ in running:
                    other.terminate()
                raise SystemExit(
                    f"training {spec['name']} failed (exit {proc.returncode}); "
                    f"see {out_dir / spec['name'] / 'train.log'}"
                )
            walls[spec["name"]] = time.time() - started
            print(f"[train] {spec['name']}: done in {walls[spec['name']]:.0f} s", flush=True)
            if on_done is not None:
                on_done(spec)
    return walls


def ceiling(data: Path) -> dict:
    """Model-free ceiling: mean IoU of each validation ground-truth mask with itself cropped to its
    box at each resolution and pasted back (binarised at 0.5), per geometry; all objects and
    objects whose longer box side is under 32 px."""
    import numpy as np
    import torch
    from pycocotools.coco import COCO

    from dynamask.evaluation.round_trip import round_trip_iou

    coco = COCO(str(data / "val.json"))
    per_image = []
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False))
        if anns:
            masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]))
            boxes = torch.tensor(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                dtype=torch.float32,
            )
            per_image.append((masks, boxes))
    small = torch.cat([(b[:, 2:] - b[:, :2]).max(dim=1).values < 32 for _, b in per_image])
    out = {"instances": int(small.numel()), "small_instances": int(small.sum())}
    for geometry in GEOMETRIES:
        rows = {}
        for r in RESOLUTIONS:
            iou = torch.cat([round_trip_iou(m, b, r, geometry) for m, b in per_image])
            rows[str(r)] = {
                "mean_iou": round(float(iou.mean()), 4),
                "mean_iou_small": round(float(iou[small].mean()), 4),
            }
        out[geometry] = rows
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file: what an evaluation's cached result is keyed on."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluate_all(specs, args, out_dir: Path, cache=None, only_ready: bool = False) -> tuple[dict, list]:
    """Evaluate every spec's policies (and the dial on ``DIAL_MODEL``) on the validation split.

    ``cache(spec)`` may name a JSON file per head where its results are kept, keyed on the SHA-256
    of the weights, of the validation annotations and on the policies and dial evaluated: a head
    whose key matches is not evaluated again (evaluation is deterministic), so heads can be
    evaluated as they finish. ``only_ready`` skips specs whose weights do not exist yet."""
    import torch

    from dynamask.data import CocoInstanceDataset
    from dynamask.engine.evaluate import evaluate

    torch.set_num_threads(args.jobs * args.threads)
    dataset = None
    val_digest = file_digest(args.data / "val.json") if cache else None
    models, dial = {}, []
    for spec in specs:
        weights = Path(spec.get("weights") or out_dir / spec["name"] / "model_final.pt")
        if only_ready and not weights.exists():
            continue
        cache_file = cache(spec) if cache else None
        key = None
        if not weights.exists() and cache_file is not None and cache_file.exists():
            # a retired head (weights no longer kept, to save space): its results stay, for the
            # same validation data and policies only
            cached = json.loads(cache_file.read_text())
            if cached["key"].get("val_json_sha256") == val_digest and cached["key"].get("evals") == [
                list(e) for e in spec["evals"]
            ]:
                models.update(cached["models"])
                dial.extend(cached["dial"])
                print(
                    f"[eval] {spec['name']}: head file not kept; results from {cache_file.name} "
                    f"(weights SHA-256 {cached['key']['weights_sha256'][:12]}…)",
                    flush=True,
                )
                continue
            raise SystemExit(
                f"{spec['name']}: no head file and its kept results are for other data or policies; "
                f"delete {cache_file} to train it again"
            )
        if cache_file is not None:
            key = {
                "weights_sha256": file_digest(weights),
                "val_json_sha256": val_digest,
                "evals": [list(e) for e in spec["evals"]],
                "dial": list(DIAL) if spec["name"] == DIAL_MODEL else [],
            }
            if cache_file.exists():
                cached = json.loads(cache_file.read_text())
                if cached.get("key") == key:
                    models.update(cached["models"])
                    dial.extend(cached["dial"])
                    print(
                        f"[eval] {spec['name']}: results kept in {cache_file.name} (same weights and data)", flush=True
                    )
                    continue
        if dataset is None:
            dataset = CocoInstanceDataset(
                str(args.data / "val.json"),
                str(args.data / "val"),
                transforms=None,
                keep_empty=True,
                validate_masks=False,
            )
        head_models, head_dial = {}, []
        for name, policy in spec["evals"]:
            m = evaluate(weights=str(weights), dataset=dataset, policy=policy, device="cpu", progress=False)
            head_models[name] = summary(m) | {"trained_as": spec["name"]}
            print(
                f"[eval] {name:12s} segm AP {m['segm_AP']:.1f}  boundary AP {m['boundary_AP']:.1f}  "
                f"mask GFLOPs/inst {m['mask_gflops_per_instance']:.4f}",
                flush=True,
            )
        if spec["name"] == DIAL_MODEL:
            for b in DIAL:
                m = evaluate(
                    weights=str(weights), dataset=dataset, policy="dynamic", budget=b, device="cpu", progress=False
                )
                head_dial.append({"mask_budget": b} | summary(m))
                print(
                    f"[dial] budget {b:.1f}  segm AP {m['segm_AP']:.1f}  boundary AP {m['boundary_AP']:.1f}  "
                    f"mask GFLOPs/inst {m['mask_gflops_per_instance']:.4f}",
                    flush=True,
                )
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(
                cache_file,
                (json.dumps({"key": key, "models": head_models, "dial": head_dial}, indent=1) + "\n").encode(),
            )
        models.update(head_models)
        dial.extend(head_dial)
    return models, dial


def summary(m: dict) -> dict:
    """The metrics kept per model, with the short names the issue uses (AP50 … APl are segm)."""
    out = {k: m.get(k) for k in METRIC_KEYS}
    out.update({short: m.get(f"segm_{short}") for short in ("AP50", "AP75", "APs", "APm", "APl")})
    out["rho"] = m.get("complexity_spearman")
    out["rho_within_size"] = m.get("complexity_spearman_within_size")
    return out


def judge(models: dict) -> dict:
    """The issue's goals, each with the numbers it was decided on."""
    full, mrcnn = models["fixed-112"], models["maskrcnn"]
    goals = {}
    for t in DYNAMIC_TARGETS:
        d = models[f"dynamic@{t}"]
        ratio = d["mask_gflops_per_instance"] / full["mask_gflops_per_instance"]
        goals[f"dynamic@{t}"] = {
            "flops_vs_fixed112": ratio,
            "segm_AP_minus_fixed112": d["segm_AP"] - full["segm_AP"],
            "boundary_AP_minus_fixed112": d["boundary_AP"] - full["boundary_AP"],
            "segm_AP_minus_maskrcnn": d["segm_AP"] - mrcnn["segm_AP"],
            "boundary_AP_minus_maskrcnn": d["boundary_AP"] - mrcnn["boundary_AP"],
            "rho": d["complexity_spearman"],
            "goal_matches_fixed112_at_40pct": bool(
                ratio <= 0.4 and d["segm_AP"] >= full["segm_AP"] - 0.5 and d["boundary_AP"] >= full["boundary_AP"] - 0.5
            ),
            "goal_beats_maskrcnn": bool(
                d["segm_AP"] >= mrcnn["segm_AP"] + 3 and d["boundary_AP"] >= mrcnn["boundary_AP"] + 5
            ),
            "goal_rho": bool(d["complexity_spearman"] is not None and d["complexity_spearman"] >= 0.5),
        }
    return goals


def keep_logs(specs, out_dir: Path, logs: Path) -> None:
    """Copy each head's training log and metrics.jsonl next to the results (they are committed)."""
    import shutil

    for spec in specs:
        for name in ("train.log", "metrics.jsonl"):
            src = out_dir / spec["name"] / name
            if src.exists():
                (logs / spec["name"]).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, logs / spec["name"] / name)


def plot(models: dict, dial: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "segm_AP", "mask AP"), (axes[1], "boundary_AP", "boundary AP")):
        fixed = [n for n in ("fixed-14", "fixed-28", "fixed-56", "fixed-112") if n in models]
        ax.plot(
            [models[n]["mask_gflops_per_instance"] for n in fixed],
            [models[n][key] for n in fixed],
            "o-",
            color="tab:gray",
            label="r-FPN fixed 14/28/56/112",
        )
        for n in fixed:
            ax.annotate(
                n.split("-")[1],
                (models[n]["mask_gflops_per_instance"], models[n][key]),
                fontsize=8,
                xytext=(3, -10),
                textcoords="offset points",
            )
        if dial:
            ax.plot(
                [d["mask_gflops_per_instance"] for d in dial],
                [d[key] for d in dial],
                ".--",
                color="tab:blue",
                label=f"{DIAL_MODEL}, test-time dial 0.1…1.0",
            )
        dyn = [n for n in models if n.startswith("dynamic@") and not n.endswith(" calibrated")]
        ax.plot(
            [models[n]["mask_gflops_per_instance"] for n in dyn],
            [models[n][key] for n in dyn],
            "*",
            color="tab:red",
            markersize=12,
            label="dynamic, trained at budget 0.2/0.4/0.6",
        )
        calibrated = [n for n in models if n.endswith(" calibrated")]
        if calibrated:
            ax.plot(
                [models[n]["mask_gflops_per_instance"] for n in calibrated],
                [models[n][key] for n in calibrated],
                "D",
                color="tab:green",
                markersize=8,
                label="the same, calibrated on held-out detections",
            )
        paper = [n for n in models if n.startswith("paper@")]
        if paper:
            ax.plot(
                [models[n]["mask_gflops_per_instance"] for n in paper],
                [models[n][key] for n in paper],
                "P",
                color="tab:purple",
                markersize=10,
                label="paper switch, trained at budget 0.4/0.6",
            )
        comparable = [n for n in models if n.startswith("paper-selcost")]
        if comparable:
            ax.plot(
                [models[n]["mask_gflops_per_instance"] for n in comparable],
                [models[n][key] for n in comparable],
                "X",
                color="tab:pink",
                markersize=10,
                label="paper switch, comparable signal, 0.4",
            )
        for n in ("size", "maskrcnn"):
            if n in models:
                ax.plot(
                    models[n]["mask_gflops_per_instance"],
                    models[n][key],
                    "s" if n == "size" else "^",
                    markersize=8,
                    label={"size": "size rule", "maskrcnn": "Mask R-CNN head (28×28)"}[n],
                )
        ax.set_xlabel("mask-head GFLOPs per instance")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle("shapes val: mask accuracy against mask-head cost (one frozen detector)")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)


def table(models: dict) -> str:
    lines = [
        f"{'model':13s} {'segm AP':>8s} {'AP50':>6s} {'AP75':>6s} {'bnd AP':>7s} {'GFLOPs/inst':>11s}  "
        f"{'resolutions 14/28/56/112 (%)':29s} {'rho':>5s}"
    ]
    for name, m in models.items():
        hist = m["resolution_histogram"] or {}
        total = sum(hist.values()) or 1
        shares = "/".join(f"{100 * hist.get(r, hist.get(str(r), 0)) / total:.0f}" for r in (14, 28, 56, 112))
        rho = "n/a" if m["complexity_spearman"] is None else f"{m['complexity_spearman']:.2f}"
        lines.append(
            f"{name:13s} {m['segm_AP']:8.1f} {m['segm_AP50']:6.1f} {m['segm_AP75']:6.1f} "
            f"{m['boundary_AP']:7.1f} {m['mask_gflops_per_instance']:11.4f}  {shares:29s} {rho:>5s}"
        )
    return "\n".join(lines)


def run_record(args, started: float, walls: dict) -> dict:
    """Machine, date and wall times of a run, for its results JSON."""
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "threads_per_job": args.threads,
        },
        "date": datetime.date.today().isoformat(),
        "wall_time_s": round(time.time() - started, 1),
        "train_wall_s": {k: None if v is None else round(v, 1) for k, v in walls.items()},
    }


def write_outputs(result: dict, specs, args, logs: bool = True) -> None:
    """The results JSON (atomically), the heads' training logs beside it (``logs``) and the plot."""
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(args.results, (json.dumps(result, indent=1) + "\n").encode())
    if logs:
        keep_logs(specs, args.out, args.results.parent / (args.results.stem + "_logs"))
    plot(result["models"], result["dial"], args.results.with_suffix(".png"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="shapes dataset (made if missing: 1000 train images, the shipped detector's "
        "training set, and --val validation images; default runs/shapes_bench)",
    )
    p.add_argument("--val", type=int, default=400, help="validation images when the dataset is made")
    p.add_argument(
        "--detector",
        default=str(ROOT / "runs" / "shapes_dynamask_r18_shipped.pt"),
        help="checkpoint whose detector is frozen and shared by all mask heads (default: the "
        "128-px checkpoint once shipped, see RETIRED_DETECTOR)",
    )
    p.add_argument("--iters", type=int, default=800, help="training iterations per mask head")
    p.add_argument("--out", type=Path, default=None, help="training runs (default runs/accuracy_vs_cost)")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results JSON, plot beside it (default benchmarks/results/accuracy_vs_cost.json)",
    )
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training")
    p.add_argument(
        "--mask-geometry",
        choices=GEOMETRIES,
        default="exact",
        help="mask geometry every head is trained and evaluated in (default: exact)",
    )
    p.add_argument("--quick", action="store_true", help="tiny run to check the plumbing (numbers meaningless)")
    args = p.parse_args(argv)
    suffix = "_quick" if args.quick else ""  # a quick run never touches the real run's files
    if args.quick:
        args.iters = min(args.iters, 4)
        args.val = min(args.val, 6)
    args.data = args.data or ROOT / "runs" / f"shapes_bench{suffix}"
    # finished runs are reused, so runs of another geometry must not sit in the same folder
    args.out = args.out or ROOT / "runs" / f"accuracy_vs_cost_{args.mask_geometry}{suffix}"
    name = "accuracy_vs_cost" + ("_legacy_geometry" if args.mask_geometry == "torchvision" else "")
    args.results = args.results or (
        args.out / f"{name}.json" if args.quick else ROOT / "benchmarks" / "results" / f"{name}.json"
    )

    if not os.path.isfile(args.detector):
        raise SystemExit(
            f"{args.detector}: no detector. The published numbers used the 128-px checkpoint shipped until "
            f"it was retired; restore it with\n    {RETIRED_DETECTOR}\nor train one with "
            f"`dynamask train --config configs/shapes_dynamask_r18.yaml` (checkpoints/README.md) and "
            f"pass --detector runs/shapes_dynamask_r18/model_final.pt"
        )
    started = time.time()
    if not (args.data / "train.json").exists():
        from dynamask.data.shapes import generate_shapes_dataset

        print(f"[data] making {args.data} (1000 train, {args.val} val, 128 px, seed 0)", flush=True)
        generate_shapes_dataset(args.data, 8 if args.quick else 1000, args.val, image_size=128, seed=0)
    bounds = ceiling(args.data)
    for geometry in GEOMETRIES:
        print(
            f"[ceiling] {geometry:11s} round-trip IoU at 14/28/56/112: "
            + " / ".join(f"{bounds[geometry][str(r)]['mean_iou']:.3f}" for r in RESOLUTIONS)
            + "  (objects < 32 px: "
            + " / ".join(f"{bounds[geometry][str(r)]['mean_iou_small']:.3f}" for r in RESOLUTIONS)
            + ")",
            flush=True,
        )
    specs = runs(args.detector, args.mask_geometry)
    walls = train_all(specs, args, args.out)
    models, dial = evaluate_all(specs, args, args.out)
    order = ["maskrcnn", "fixed-14", "fixed-28", "fixed-56", "fixed-112", "size"] + [
        f"dynamic@{t}" for t in DYNAMIC_TARGETS
    ]
    models = {n: models[n] for n in order}
    result = {
        "protocol": {
            "detector": os.path.relpath(args.detector, ROOT),
            "detector_frozen": True,
            "iterations_per_head": args.iters,
            "dataset": os.path.relpath(args.data, ROOT),
            "val_images": args.val,
            "dial_model": DIAL_MODEL,
            "quick": args.quick,
            "schedule": schedule(args.iters),
            "mask_geometry": args.mask_geometry,
        },
        "ceiling": bounds,
        **run_record(args, started, walls),
        "models": models,
        "dial": dial,
        "goals": judge(models),
    }
    write_outputs(result, specs, args)
    print(table(models))
    for name, g in result["goals"].items():
        print(
            f"{name}: FLOPs {100 * g['flops_vs_fixed112']:.0f} % of fixed-112, segm {g['segm_AP_minus_fixed112']:+.1f} / "
            f"boundary {g['boundary_AP_minus_fixed112']:+.1f} vs fixed-112, segm {g['segm_AP_minus_maskrcnn']:+.1f} / "
            f"boundary {g['boundary_AP_minus_maskrcnn']:+.1f} vs Mask R-CNN, rho {g['rho']}"
        )
    print(f"wrote {args.results} and {args.results.with_suffix('.png')} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
