"""Where mask resolution pays: mask accuracy against mask cost on shapes with real-world outline
detail (256 px, ``dynamask shapes --detail``), heads of equal size, both switches side by side.

Protocol (issue 11; BENCHMARKS.md states the run's numbers):

* data: ``--train`` + ``--val`` detailed shapes images at 256 px, seed 0 (made if missing);
  its model-free yardstick (round-trip mask IoU at 14/28/56/112) goes into ``protocol.yardstick``;
* one detector for all heads: ``configs/shapes_detail_detector_r18.yaml`` (ResNet-18-FPN, trained
  with a 64-wide Mask R-CNN head beside it); by default the shipped float16 copy
  ``checkpoints/shapes_detail_detector_r18.pt`` (so anyone can rerun the heads on the same
  weights), or with ``--train-detector`` trained here (hours on a CPU; resumed when interrupted);
  frozen and shared;
* heads, each trained ``--iters`` iterations on it with the same data, seed and optimiser:
  Mask R-CNN 28×28 with 4×conv of width C; r-FPN fixed-14/28/56/112 whose stage-14 trunk has
  width C, later stages in the balanced ratios (C, 2C/3, C/2, C/3); the size rule on fixed-112;
  dynamic with the cost switch at budget targets 0.2 / 0.4 / 0.6; the paper switch at 0.4 / 0.6;
* per model: segm AP (AP50/75/s/m/l), boundary AP, mask GFLOPs per instance, mask-branch
  parameters, resolution histogram, ρ between chosen resolution and outline complexity over all
  matched detections and within size bins; the test-time dial on dynamic@0.4.

    python benchmarks/accuracy_vs_cost_256.py --quick     # plumbing only, minutes, numbers meaningless
    python benchmarks/accuracy_vs_cost_256.py             # the run (heads: hours on 2 cores)
    python benchmarks/accuracy_vs_cost_256.py --eval-only # the table from the committed head files

Every head, once trained, is kept as a small float16 head file (mask branch alone, referencing the
detector) with its log in ``benchmarks/results/accuracy_vs_cost_256_heads/`` (``--heads``); a head
whose file is there is not trained again, so a run split over several machines or sessions
resumes from the repository, and the table is always computed from exactly those files. Each
head's evaluation is kept beside it (``NAME.eval.json``, keyed on the SHA-256 of its weights and of
the validation annotations); ``--eval-ready --jobs 1`` evaluates the finished heads while others train.
Writes ``benchmarks/results/accuracy_vs_cost_256.json`` and ``.png`` (``--results`` to change).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import accuracy_vs_cost as base  # noqa: E402  (its training / evaluation / plotting helpers)

DETECTOR_CONFIG = ROOT / "configs" / "shapes_detail_detector_r18.yaml"
SHIPPED_DETECTOR = ROOT / "checkpoints" / "shapes_detail_detector_r18.pt"
COST_TARGETS = (0.2, 0.4, 0.6)
PAPER_TARGETS = (0.4, 0.6)  # the paper switch's own cost puts lower targets out of reach
#: the authors' switch taught by the comparable signal (issue #25, part 3): each stage's mask error
#: against one 112×112 target instead of its own edge loss (model.paper_switch_signal)
COMPARABLE_PAPER = "paper-selcost@0.4"
#: point-sparse heads (issue 31, model.refinement=points): 56 and 112 re-predict only the
#: SPARSE_POINTS most uncertain points per RoI; the dynamic one's training target is a fraction of
#: its *own* full path (the 14 stage alone is 43 % of it), chosen so that the dial can reach 20 % of
#: dense fixed-112's mask FLOPs (72 % of its own path) around where it was trained
SPARSE_POINTS = 784
SPARSE_TARGET = 0.7
SPARSE_FIXED = "sparse-fixed-112"
SPARSE_DYNAMIC = f"sparse-dynamic@{SPARSE_TARGET}"
ORDER = (
    ["maskrcnn", "fixed-14", "fixed-28", "fixed-56", "fixed-112", "size"]
    + [f"dynamic@{t}" for t in COST_TARGETS]
    + [f"paper@{t}" for t in PAPER_TARGETS]
    + [COMPARABLE_PAPER]
    + [SPARSE_FIXED, SPARSE_DYNAMIC]
)


def head_widths(c: int) -> list[int]:
    """Stage widths with a stage-14 trunk of width C, later stages in the balanced ratios 3:2:1.5:1."""
    return [c, round(2 * c / 3), round(c / 2), round(c / 3)]


def runs(detector: str, width: int) -> list[dict]:
    """The head trainings, in the order they run: the two heads the demo ships (Mask R-CNN and
    dynamic@0.4) first, so they are ready earliest; the order changes nothing in any run."""
    common = [
        f"model.detector_weights={detector}",
        "model.freeze_detector=true",
        "model.mask_geometry=exact",
        f"model.head_widths=[{','.join(map(str, head_widths(width)))}]",
        f"model.maskrcnn_head_channels={width}",
    ]
    cfg = str(DETECTOR_CONFIG)

    def fixed(r: int) -> dict:
        evals = [(f"fixed-{r}", f"fixed-{r}")] + ([("size", "size")] if r == 112 else [])
        return {
            "name": f"fixed-{r}",
            "config": cfg,
            "evals": evals,
            "overrides": common + ["model.head=dynamask", f"model.policy=fixed-{r}", "model.refinement=dense"],
        }

    def switched(switch: str, target: float, signal: str = "edge") -> dict:
        name = f"{'dynamic' if switch == 'cost' else 'paper'}@{target}" if signal == "edge" else COMPARABLE_PAPER
        extra = [] if signal == "edge" else [f"model.paper_switch_signal={signal}"]
        return {
            "name": name,
            "config": cfg,
            "evals": [(name, "dynamic")],
            "overrides": common
            + [
                "model.head=dynamask",
                "model.policy=dynamic",
                f"model.switch={switch}",
                f"model.mask_budget_target={target}",
                "model.refinement=dense",
            ]
            + extra,
        }

    maskrcnn = {
        "name": "maskrcnn",
        "config": cfg,
        "overrides": common + ["model.head=maskrcnn"],
        "evals": [("maskrcnn", None)],
    }
    points = [
        "model.refinement=points",
        f"model.refinement_points={SPARSE_POINTS}",
        f"model.refinement_train_points={SPARSE_POINTS}",
    ]
    sparse = [
        {
            "name": SPARSE_FIXED,
            "config": cfg,
            "evals": [(SPARSE_FIXED, "fixed-112")],
            "overrides": common + ["model.head=dynamask", "model.policy=fixed-112"] + points,
        },
        {
            "name": SPARSE_DYNAMIC,
            "config": cfg,
            "evals": [(SPARSE_DYNAMIC, "dynamic")],
            "overrides": common
            + [
                "model.head=dynamask",
                "model.policy=dynamic",
                "model.switch=cost",
                f"model.mask_budget_target={SPARSE_TARGET}",
            ]
            + points,
        },
    ]
    return (
        [maskrcnn, switched("cost", 0.4), fixed(112), fixed(28)]
        + [switched("cost", t) for t in COST_TARGETS if t != 0.4]
        + [fixed(56), fixed(14)]
        + [switched("paper", t) for t in PAPER_TARGETS]
        + [switched("paper", 0.4, "selection_cost")]
        + sparse
    )


def head_file(args, name: str) -> Path:
    """Where a trained head is kept (float16 mask branch referencing the detector)."""
    return args.heads / f"{name}.pt"


#: heads whose weights the repository no longer keeps (space: the paper switch alone is 3.6 MiB,
#: and tracked files stay under 40 MiB); their evaluation, config, metrics and log stay in
#: --heads, and the table reads the results from NAME.eval.json and the facts read off the weights
#: (parameters, switch, widths) from NAME.facts.json, so that a table written elsewhere (--results)
#: has them too. Deleting that file too trains the
#: head again. paper@0.4 stays: benchmarks/paper_switch_signal.py reads it. fixed-14 and fixed-56
#: were retired when the sparse heads came in (issue 31): only this table reads them.
RETIRED = ("paper@0.6", COMPARABLE_PAPER, "fixed-14", "fixed-56")


def retired(args, name: str) -> bool:
    return name in RETIRED and not head_file(args, name).exists() and (args.heads / f"{name}.eval.json").exists()


def keep_head(args, detector: Path, spec: dict) -> None:
    """Ship a finished training's mask branch (and its config, metrics and log) to ``args.heads``,
    with its training wall time, so that it survives the run folder."""
    sys.path.insert(0, str(ROOT / "tools"))
    from ship_checkpoint import ship

    run_dir = args.out / spec["name"]
    args.heads.mkdir(parents=True, exist_ok=True)
    ship(run_dir, head_file(args, spec["name"]), detector=detector)
    # seconds spent training, summed over the logged windows (a resumed run's pieces included)
    seconds, last = 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if "time_per_iter" in record and "event" not in record and record["iteration"] > last:
            seconds += record["time_per_iter"] * (record["iteration"] - last)
            last = record["iteration"]
    wall = {"train_wall_s": round(seconds, 1), "iterations": last}
    (args.heads / f"{spec['name']}.wall.json").write_text(json.dumps(wall) + "\n")
    partial_file(args, spec["name"]).unlink(missing_ok=True)  # finished: its partial state is obsolete
    print(f"[keep] {spec['name']}: {head_file(args, spec['name'])}", flush=True)


PARTIAL_TEXTS = ("config.yaml", "metrics.jsonl", "train.log")


def partial_file(args, name: str) -> Path:
    """An unfinished head's resumable state, kept in the repository between sessions."""
    return args.heads / f"{name}.partial.pt"


def save_partial(args, detector: Path, name: str) -> Path:
    """``checkpoint_last.pt`` of an unfinished head without the frozen detector's weights (they are
    the detector file's, restored exactly from it by :func:`restore_partial`), plus the run's
    config, metrics and log: a few MiB instead of the whole model, so a run that outlasts a session
    on a machine that forgets ``runs/`` can go on from the repository."""
    import torch

    from dynamask.engine.build import load_checkpoint, save_checkpoint
    from dynamask.inference import MASK_BRANCH_PREFIX, file_sha256

    run_dir = args.out / name
    ckpt = load_checkpoint(str(run_dir / "checkpoint_last.pt"))
    shipped = load_checkpoint(str(detector))["model"]
    head, dtypes = {}, {}
    for k, v in ckpt["model"].items():
        if k.startswith(MASK_BRANCH_PREFIX) or k not in shipped:
            head[k] = v
        elif torch.equal(shipped[k].to(v.dtype), v):
            dtypes[k] = str(v.dtype).removeprefix("torch.")
        else:
            raise SystemExit(f"{run_dir}: detector weight {k!r} differs from {detector}; cannot keep it as partial")
    texts = {t: (run_dir / t).read_text() for t in PARTIAL_TEXTS if (run_dir / t).exists()}
    out = partial_file(args, name)
    args.heads.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        str(out),
        {
            **{k: v for k, v in ckpt.items() if k not in ("model", "versions")},
            "model": head,
            "detector_dtypes": dtypes,
            "detector_sha256": file_sha256(str(detector)),
            "texts": texts,
        },
    )
    print(
        f"[partial] {name}: iteration {ckpt['iteration']} -> {out} ({out.stat().st_size / 2**20:.1f} MiB)", flush=True
    )
    return out


def restore_partial(args, detector: Path, name: str) -> None:
    """Rebuild an unfinished head's run folder (``checkpoint_last.pt``, config, metrics, log) from
    its partial file, bit for bit, so that ``--resume`` goes on as if the folder had stayed."""
    import torch

    from dynamask.engine.build import load_checkpoint, save_checkpoint
    from dynamask.inference import file_sha256

    pack = load_checkpoint(str(partial_file(args, name)))
    if pack["detector_sha256"] != file_sha256(str(detector)):
        raise SystemExit(f"{partial_file(args, name)} was saved with another detector than {detector}")
    shipped = load_checkpoint(str(detector))["model"]
    model = {k: shipped[k].to(getattr(torch, d)) for k, d in pack["detector_dtypes"].items()}
    model.update(pack["model"])
    run_dir = args.out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    for t, text in pack["texts"].items():
        (run_dir / t).write_text(text)
    state = {k: v for k, v in pack.items() if k not in ("detector_dtypes", "detector_sha256", "texts", "versions")}
    save_checkpoint(str(run_dir / "checkpoint_last.pt"), {**state, "model": model})
    print(f"[partial] {name}: restored at iteration {pack['iteration']} into {run_dir}", flush=True)


def train_detector(args) -> Path:
    """The shared detector: the shipped file unless ``--train-detector``; then the run's
    model_final.pt, trained (or resumed) here when missing."""
    if not args.train_detector:
        if not args.detector.exists():
            raise SystemExit(f"detector {args.detector} is missing; pass --train-detector to train one here (hours)")
        print(f"[detector] using {args.detector}", flush=True)
        return args.detector
    out = args.detector_dir
    final = out / "model_final.pt"
    if final.exists():
        print(f"[detector] reusing {final}", flush=True)
        return final
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "dynamask",
        "train",
        "--config",
        str(DETECTOR_CONFIG),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        f"data.train_json={args.data / 'train.json'}",
        f"data.train_images={args.data / 'train'}",
        f"data.val_json={args.data / 'val.json'}",
        f"data.val_images={args.data / 'val'}",
    ]
    if args.quick:
        cmd += [
            "solver.max_iter=4",
            "solver.steps=[]",
            "solver.warmup_iters=1",
            "solver.checkpoint_period=0",
            "test.eval_period=0",
        ]
    if (out / "checkpoint_last.pt").exists():
        cmd.append("--resume")
    print(f"[detector] training: {' '.join(cmd[3:])} (log: {out / 'train.log'})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(out / "train.log", "a") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if code != 0:
        raise SystemExit(f"detector training failed (exit {code}); see {out / 'train.log'}")
    return final


def model_facts(weights: Path) -> dict:
    """Mask-branch parameters, switch and resolved widths of a trained head."""
    from dynamask.inference import model_from_checkpoint

    model, ckpt = model_from_checkpoint(str(weights))
    hp = ckpt.get("hyper_parameters") or {}
    return {
        "params": sum(p.numel() for p in model.mask_branch.parameters()),
        "switch": (hp.get("switch") if hp.get("head") == "dynamask" and hp.get("policy") == "dynamic" else None),
        "widths": hp.get("head_widths") if hp.get("head") == "dynamask" else [hp.get("maskrcnn_head_channels")] * 4,
    }


def judge(models: dict) -> dict:
    """Issue 11's goals, judged on dynamic@0.4 (the default switch at the default target)."""
    d, full, f28, mrcnn = models["dynamic@0.4"], models["fixed-112"], models["fixed-28"], models["maskrcnn"]
    ratio = d["mask_gflops_per_instance"] / full["mask_gflops_per_instance"]
    rho = d.get("rho_within_size")
    return {
        "fixed112_minus_fixed28_boundary": full["boundary_AP"] - f28["boundary_AP"],
        "goal_fixed112_beats_fixed28_by_3_boundary": bool(full["boundary_AP"] >= f28["boundary_AP"] + 3),
        "dynamic_flops_vs_fixed112": ratio,
        "goal_dynamic_matches_fixed112_at_40pct": bool(
            ratio <= 0.4 and d["segm_AP"] >= full["segm_AP"] - 0.5 and d["boundary_AP"] >= full["boundary_AP"] - 0.5
        ),
        "dynamic_minus_maskrcnn": {
            "segm_AP": d["segm_AP"] - mrcnn["segm_AP"],
            "boundary_AP": d["boundary_AP"] - mrcnn["boundary_AP"],
        },
        "goal_dynamic_beats_maskrcnn": bool(
            d["segm_AP"] >= mrcnn["segm_AP"] + 3 and d["boundary_AP"] >= mrcnn["boundary_AP"] + 5
        ),
        "rho_within_size": rho,
        "goal_rho_within_size": bool(rho is not None and rho >= 0.5),
    }


def markdown(result: dict) -> str:
    """The results as the Markdown tables BENCHMARKS.md shows (so that no number is copied by hand)."""
    models, full = result["models"], result["models"]["fixed-112"]["mask_gflops_per_instance"]
    walls = result.get("train_wall_s") or {}

    def num(v, fmt=".1f"):
        return "—" if v is None else format(v, fmt)

    rows = [
        "| model | switch | mask params | GFLOPs/inst (vs fixed-112) | segm AP | AP50 | AP75 | APs | APm | APl "
        "| boundary AP | 14/28/56/112 | ρ | ρ within size | training s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, m in models.items():
        hist = m.get("resolution_histogram") or {}
        g = m["mask_gflops_per_instance"]
        rows.append(
            f"| {name} | {m.get('switch') or '—'} | {m['params']:,} | {g:.3f} ({100 * g / full:.0f} %) "
            f"| {m['segm_AP']:.1f} | {num(m['AP50'])} | {num(m['AP75'])} | {num(m['APs'])} | {num(m['APm'])} "
            f"| {num(m['APl'])} | {m['boundary_AP']:.1f} | {'/'.join(str(hist.get(str(r), 0)) for r in (14, 28, 56, 112))} "
            f"| {num(m.get('rho'), '.2f')} | {num(m.get('rho_within_size'), '.2f')} "
            f"| {num(walls.get(m.get('trained_as', name)), '.0f') if m.get('trained_as', name) == name else '(' + m['trained_as'] + ')'} |"
        )
    dial = [
        "| mask_budget | GFLOPs/inst (vs fixed-112) | segm AP | boundary AP | 14/28/56/112 |",
        "|---:|---:|---:|---:|---|",
    ]
    for d in result.get("dial") or []:
        hist = d.get("resolution_histogram") or {}
        g = d["mask_gflops_per_instance"]
        dial.append(
            f"| {d['mask_budget']:.1f} | {g:.3f} ({100 * g / full:.0f} %) | {d['segm_AP']:.1f} | {d['boundary_AP']:.1f} "
            f"| {'/'.join(str(hist.get(str(r), 0)) for r in (14, 28, 56, 112))} |"
        )
    return "\n".join(rows) + "\n\n" + "\n".join(dial)


def add_calibrated(result: dict, args) -> None:
    """The dynamic heads calibrated on held-out detections and issue #25's goals, from
    ``switch_quality_256.json`` (benchmarks/switch_quality_256.py) when it is there."""
    path = HERE / "results" / "switch_quality_256.json"
    if args.quick or not path.exists():
        return
    sq = json.loads(path.read_text())
    for label, r in sq["rows"].items():
        if not label.endswith(" calibrated") or ", dial" in label:
            continue
        head = label.removesuffix(" calibrated")
        base_row = result["models"].get(head, {})
        result["models"][label] = {
            **{
                k: r.get(k)
                for k in (
                    "segm_AP",
                    "boundary_AP",
                    "bbox_AP",
                    "mask_gflops_per_instance",
                    "resolution_histogram",
                    "num_detections",
                    "complexity_spearman",
                    "complexity_spearman_within_size",
                )
            },
            "segm_AP50": r.get("segm_AP50"),
            "segm_AP75": r.get("segm_AP75"),
            "AP50": r.get("segm_AP50"),
            "AP75": r.get("segm_AP75"),
            "APs": None,
            "APm": None,
            "APl": None,
            "rho": r.get("complexity_spearman"),
            "rho_within_size": r.get("complexity_spearman_within_size"),
            "params": base_row.get("params"),
            "switch": "cost",
            "widths": base_row.get("widths"),
            "trained_as": head,
            "calibrated_on": sq["calibration_split"]["data"],
        }
    result["goals_issue25"] = {"default_head": sq["default_head"], "source": os.path.relpath(path, ROOT), **sq["goals"]}


PILOT_HEADS = ("maskrcnn", "fixed-112", "dynamic@0.4")


def mask_loss(record: dict) -> float:
    """The mask branch's part of a metrics.jsonl record (the detector is frozen)."""
    return sum(v for k, v in record.items() if k.startswith("loss_mask") and isinstance(v, (int, float)))


def pilot(args, detector: Path, started: float) -> None:
    """Train three heads at constant LR for ``--pilot`` iterations and show their mask-loss curves
    (means of 100-iteration windows), from which the benchmark's iteration count is chosen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = [s for s in runs(str(detector), args.width) if s["name"] in PILOT_HEADS]
    out = args.out.parent / (args.out.name + "_pilot")
    saved = base.schedule
    base.schedule = lambda iters: [
        f"solver.max_iter={iters}",
        "solver.steps=[]",
        f"solver.warmup_iters={min(100, iters)}",
        f"solver.checkpoint_period={max(50, iters // 8)}",
        "test.eval_period=0",
    ]
    try:
        walls = base.train_all(specs, argparse.Namespace(**{**vars(args), "iters": args.pilot}), out)
    finally:
        base.schedule = saved
    curves = {}
    for spec in specs:
        recs = [json.loads(line) for line in (out / spec["name"] / "metrics.jsonl").read_text().splitlines() if line]
        recs = [r for r in recs if "event" not in r and "iteration" in r]
        windows = {}
        for r in recs:
            windows.setdefault((r["iteration"] - 1) // 100, []).append(mask_loss(r))
        curves[spec["name"]] = {str((w + 1) * 100): round(sum(v) / len(v), 4) for w, v in sorted(windows.items())}
    result = {
        "iterations": args.pilot,
        "lr": "constant after 100 warm-up iterations",
        "mask_loss_per_100_iterations": curves,
        "heads": list(PILOT_HEADS),
        **base.run_record(args, started, walls),
    }
    path = args.results.with_name("accuracy_vs_cost_256_pilot.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in curves.items():
        ax.plot([int(k) for k in c], list(c.values()), label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mask loss (100-iteration mean)")
    ax.set_title("pilot: head training on the frozen detector, constant LR")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    for name, c in curves.items():
        print(f"{name:12s} " + " ".join(f"{k}:{v:.3f}" for k, v in c.items()))
    print(f"wrote {path} and {path.with_suffix('.png')}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data", type=Path, default=None, help="detailed shapes dataset (made if missing; default runs/shapes_detail)"
    )
    p.add_argument("--train", type=int, default=2000, help="training images when the dataset is made")
    p.add_argument("--val", type=int, default=400, help="validation images when the dataset is made")
    p.add_argument(
        "--detector",
        type=Path,
        default=SHIPPED_DETECTOR,
        help="checkpoint whose detector all heads share, frozen (default: the shipped float16 one)",
    )
    p.add_argument(
        "--train-detector",
        action="store_true",
        help="train the detector here instead (hours on a CPU; resumed when interrupted)",
    )
    p.add_argument(
        "--detector-dir",
        type=Path,
        default=None,
        help="with --train-detector: its run folder (default runs/shapes_detail_detector_r18)",
    )
    p.add_argument(
        "--heads",
        type=Path,
        default=None,
        help="trained head files (default benchmarks/results/accuracy_vs_cost_256_heads)",
    )
    p.add_argument(
        "--save-partial",
        action="store_true",
        help="train nothing: keep every unfinished head's last checkpoint in --heads (NAME.partial.pt, "
        "without the detector) so that another machine or session resumes it from the repository",
    )
    p.add_argument(
        "--eval-only", action="store_true", help="train nothing: evaluate the head files in --heads (all must be there)"
    )
    p.add_argument(
        "--eval-ready",
        action="store_true",
        help="train nothing, write no table: evaluate the head files already in --heads and keep their "
        "results beside them (NAME.eval.json), e.g. beside trainings still running "
        "(with --jobs 1 for one thread)",
    )
    p.add_argument("--iters", type=int, default=1500, help="training iterations per mask head")
    p.add_argument("--width", type=int, default=64, help="C: Mask R-CNN conv width and r-FPN stage-14 width")
    p.add_argument("--out", type=Path, default=None, help="head training runs (default runs/accuracy_vs_cost_256)")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results JSON, plot beside it (default benchmarks/results/accuracy_vs_cost_256.json)",
    )
    p.add_argument("--jobs", type=int, default=2, help="trainings run at once")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per training")
    p.add_argument("--quick", action="store_true", help="tiny run to check the plumbing (numbers meaningless)")
    p.add_argument(
        "--pilot",
        type=int,
        default=0,
        metavar="N",
        help="instead of the benchmark: train maskrcnn, fixed-112 and dynamic@0.4 for N iterations at "
        "constant LR and plot their mask-loss curves (to choose --iters)",
    )
    args = p.parse_args(argv)
    suffix = "_quick" if args.quick else ""
    if args.quick:
        args.iters, args.train, args.val = min(args.iters, 4), 8, 6
    args.data = args.data or ROOT / "runs" / f"shapes_detail{suffix}"
    args.detector_dir = args.detector_dir or ROOT / "runs" / f"shapes_detail_detector_r18{suffix}"
    args.out = args.out or ROOT / "runs" / f"accuracy_vs_cost_256{suffix}"
    args.results = args.results or (
        args.out / "accuracy_vs_cost_256.json" if args.quick else HERE / "results" / "accuracy_vs_cost_256.json"
    )
    args.heads = args.heads or (args.out / "heads" if args.quick else HERE / "results" / "accuracy_vs_cost_256_heads")
    args.final_eval = False  # every head is evaluated below, on the same images; not twice

    started = time.time()
    if not (args.data / "train.json").exists():
        from dynamask.data import generate_shapes_dataset

        print(f"[data] making {args.data} ({args.train} train, {args.val} val, 256 px, seed 0, detail)", flush=True)
        generate_shapes_dataset(args.data, args.train, args.val, image_size=256, seed=0, detail=True)
    from dynamask.evaluation.yardstick import yardstick_from_coco

    ys = yardstick_from_coco(args.data / "val.json")
    print(f"[yardstick] val: {ys.format(3)}", flush=True)
    detector = train_detector(args)
    if args.pilot:
        pilot(args, detector, started)
        return
    specs = runs(str(detector), args.width)
    missing = [s["name"] for s in specs if not head_file(args, s["name"]).exists() and not retired(args, s["name"])]
    if args.eval_only and missing:
        raise SystemExit(f"--eval-only: no head file for {', '.join(missing)} in {args.heads}")
    if args.save_partial:
        for spec in specs:
            if not head_file(args, spec["name"]).exists() and (args.out / spec["name"] / "checkpoint_last.pt").exists():
                save_partial(args, detector, spec["name"])
        return
    for spec in specs:
        name = spec["name"]
        if (
            not head_file(args, name).exists()
            and partial_file(args, name).exists()
            and not (args.out / name / "checkpoint_last.pt").exists()
        ):
            restore_partial(args, detector, name)
    if not (args.eval_only or args.eval_ready):
        base.train_all(
            specs,
            args,
            args.out,
            finished=lambda spec: head_file(args, spec["name"]).exists() or retired(args, spec["name"]),
            on_done=lambda spec: keep_head(args, detector, spec),
        )
    walls = {}
    for spec in specs:
        spec["weights"] = head_file(args, spec["name"])
        wall_file = args.heads / f"{spec['name']}.wall.json"
        walls[spec["name"]] = json.loads(wall_file.read_text())["train_wall_s"] if wall_file.exists() else None
    # each head's results are kept beside its file, keyed on its weights and the validation data
    eval_cache = lambda spec: args.heads / f"{spec['name']}.eval.json"  # noqa: E731
    if args.eval_ready:
        base.evaluate_all(specs, args, args.out, cache=eval_cache, only_ready=True)
        return
    models, dial = base.evaluate_all(specs, args, args.out, cache=eval_cache)
    models = {n: models[n] for n in ORDER}
    for spec in specs:
        facts_file = args.heads / f"{spec['name']}.facts.json"
        if retired(args, spec["name"]):  # the facts read off its file while it was there, kept beside it
            facts = json.loads(facts_file.read_text()) | {"weights_kept": False}
        else:
            facts = model_facts(spec["weights"])
            facts_file.write_text(json.dumps(facts) + "\n")
        for name, _ in spec["evals"]:
            models[name].update(facts)
    result = {
        "protocol": {
            "detector": os.path.relpath(detector, ROOT),
            "detector_config": os.path.relpath(DETECTOR_CONFIG, ROOT),
            "detector_frozen": True,
            "detector_trained_with": "Mask R-CNN head (4x conv 64)",
            "iterations_per_head": args.iters,
            "head_width": args.width,
            "r_fpn_widths": head_widths(args.width),
            "dataset": os.path.relpath(args.data, ROOT),
            "val_images": args.val,
            "dial_model": base.DIAL_MODEL,
            "quick": args.quick,
            "schedule": base.schedule(args.iters),
            "mask_geometry": "exact",
            "yardstick": {str(r): round(v, 4) for r, v in ys.mean_mask_iou().items()},
            "yardstick_boundary": {str(r): round(v, 4) for r, v in ys.mean_boundary_iou().items()},
            "head_files": os.path.relpath(args.heads, ROOT),
        },
        **base.run_record(args, started, walls),
        # wall_time_s above is this invocation's (evaluation, and any training it did); the heads'
        # training seconds are summed from their metrics.jsonl, whichever invocation trained them
        "train_wall_s_total": round(sum(w for w in walls.values() if w), 1),
        "models": models,
        "dial": dial,
        "goals": judge(models),
    }
    add_calibrated(result, args)
    base.write_outputs(result, specs, args, logs=False)  # each head's logs are beside its file in --heads
    print(base.table(models))
    print(markdown(result))
    print(json.dumps(result["goals"], indent=1))
    print(f"wrote {args.results} and {args.results.with_suffix('.png')} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
