"""``dynamask evaluate --weights CKPT`` before and after a change, in the same run (issue #32).

The shipped head (``checkpoints/shapes_detail_dynamask_c64.pt`` on its detector) on the detailed
shapes' validation set (``--images`` images, 256 px, seed 0, as ``benchmarks/sharded_eval.py``
makes it), with this checkout's ``src/`` and with ``--reference``'s (extracted with ``git
archive``), alternating, ``--repeats`` times each, ``OMP_NUM_THREADS=--threads``: wall time, CPU
time of the process tree, the 1-minute load average after each run (a shared machine), the
forward seconds (images / ``images_per_second``) and the metrics (which must agree: both
evaluators are exact). The forward passes are the same code on both sides; ``other_s`` (wall
minus forward: start-up, data loading, scoring) is where they differ.

    python benchmarks/evaluate_speed.py --reference c7fc88d [--images 400] [--repeats 2]

Writes ``benchmarks/results/evaluate_speed.json`` (``--out``); data and outputs go to
``runs/evaluate_speed/``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from common import ROOT, child_env, detail_val_set, evaluate_shipped_head, machine, reference_source, timed_run

HERE = Path(__file__).resolve().parent
AP = ("bbox_AP", "segm_AP", "boundary_AP", "segm_AP50", "boundary_AP75", "segm_APs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="the commit compared against (git archive)")
    ap.add_argument("--images", type=int, default=400, help="validation images (default 400, the shapes' val set)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (default 1: a shared machine)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "evaluate_speed")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "evaluate_speed.json")
    args = ap.parse_args()

    data = detail_val_set(args.work, args.images)
    sources = {"new": ROOT / "src", "reference": reference_source(args.reference, args.work)}
    tail = evaluate_shipped_head(data)
    tries: dict = {name: [] for name in sources}
    metrics: dict = {}
    for k in range(args.repeats):  # alternating, so that a disturbance of the (shared) machine hits both
        for name, src in sources.items():
            env = child_env(src, args.threads)
            out = args.work / name
            run = timed_run([sys.executable, "-m", "dynamask", *tail, "--out", str(out)], env)
            metrics[name] = json.loads((out / "metrics.json").read_text())
            # the model's forward passes (the same code on both sides) and the rest: start-up, data, scoring
            run["forward_s"] = round(args.images / metrics[name]["images_per_second"], 2)
            run["other_s"] = round(run["wall_s"] - run["forward_s"], 2)
            tries[name].append(run)
            print(
                f"{name:>9} #{k + 1}: {run['wall_s']:6.1f} s wall ({run['forward_s']:.1f} s forward, "
                f"{run['other_s']:.1f} s the rest), {run['cpu_s']:6.1f} CPU-s (load {run['load_avg_1min_after']:.1f})",
                flush=True,
            )
    best = {name: min(t, key=lambda r: r["wall_s"]) for name, t in tries.items()}
    diff = max(
        abs(metrics["new"][key] - metrics["reference"][key])
        for key in AP
        if metrics["new"][key] is not None and metrics["reference"][key] is not None
    )
    report = {
        "what": "dynamask evaluate --weights on the detailed shapes val set: this checkout vs the reference commit, "
        "alternating; the fastest try of each kept (all tries listed)",
        "command": " ".join(
            [
                "dynamask",
                *evaluate_shipped_head(None),
            ]
        ),
        "benchmark_command": "python benchmarks/evaluate_speed.py " + " ".join(sys.argv[1:]),
        "reference": args.reference,
        "images": args.images,
        "omp_num_threads": args.threads,
        "new": dict(best["new"], tries=tries["new"]),
        "reference_run": dict(best["reference"], tries=tries["reference"]),
        "wall_ratio_new_over_reference": round(best["new"]["wall_s"] / best["reference"]["wall_s"], 3),
        "other_s_new_minus_reference": round(
            min(r["other_s"] for r in tries["new"]) - min(r["other_s"] for r in tries["reference"]), 2
        ),
        "metrics_new": {k: metrics["new"][k] for k in (*AP, "num_detections", "images_per_second")},
        "max_ap_difference": diff,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    print(
        f"new {best['new']['wall_s']:.1f} s, reference {best['reference']['wall_s']:.1f} s wall; "
        f"largest AP difference {diff:.2e}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
