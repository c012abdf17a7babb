"""Would the detection score save the switch's compute? A test-time diagnostic for issue 11's heads.

On the 256-px benchmark three of four kept detections match no object, and the learnt switch gives
them as much compute as real objects: its training budget (0.4) is met on training proposals, not on
test detections (0.46 of fixed-112's FLOPs). The detection score is known before the mask branch
runs. This script stops every detection scoring below a floor at the coarsest stage (14×14) and lets
the head's policy choose for the others — no retraining — and reports AP and mask FLOPs beside the
same heads without the gate. ``fixed-112`` gated by score alone is the control: if it does as well as
a gated switch, the switch adds nothing beyond the score.

The gate is the model's own option ``model.mask_score_floor``: the detector's scores reach the
mask branch with its detections, and a gated detection skips the switch and is charged only the
14×14 stage it runs.

    python benchmarks/score_gate.py                       # the default heads and floors, 400 images
    python benchmarks/score_gate.py --max-images 20 --floors 0.5   # a quick check

Writes ``benchmarks/results/score_gate_256.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from common import EVAL_KEYS, machine  # noqa: E402

HEADS = HERE / "results" / "accuracy_vs_cost_256_heads"
KEEP = EVAL_KEYS


def run_one(head: str, policy: str, floor: float, data: str, max_images: int | None) -> dict:
    """One evaluation on one thread (the process pool's unit of work)."""
    torch.set_num_threads(1)
    from dynamask.data import CocoInstanceDataset
    from dynamask.engine.evaluate import evaluate
    from dynamask.inference import model_from_checkpoint

    dataset = CocoInstanceDataset(
        str(Path(data) / "val.json"), str(Path(data) / "val"), transforms=None, keep_empty=True, validate_masks=False
    )
    model, _ = model_from_checkpoint(str(HEADS / f"{head}.pt"))
    model.mask_score_floor = floor  # the model's own option (0 = off)
    m = evaluate(
        model=model,
        dataset=dataset,
        policy=policy,
        budget=1.0,
        device="cpu",
        progress=False,
        batch_size=1,
        max_images=max_images,
    )
    return {k: m.get(k) for k in KEEP} | {"head": head, "policy": policy, "score_floor": floor}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "runs" / "shapes_detail",
        help="the 256-px benchmark's dataset (made by benchmarks/accuracy_vs_cost_256.py)",
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=["fixed-112", "dynamic@0.4", "dynamic@0.6"],
        help="head files in benchmarks/results/accuracy_vs_cost_256_heads (fixed-* heads run their "
        "fixed policy, dynamic@*/paper@* their switch)",
    )
    p.add_argument(
        "--floors",
        type=float,
        nargs="*",
        default=[0.0, 0.5],
        help="score floors; 0 = no gate (the baseline, evaluated in the same run)",
    )
    p.add_argument("--max-images", type=int, default=None, help="the first N validation images only")
    p.add_argument("--jobs", type=int, default=2, help="evaluations in parallel, one thread each")
    p.add_argument("--out", type=Path, default=HERE / "results" / "score_gate_256.json")
    args = p.parse_args(argv)
    if not (args.data / "val.json").exists():
        raise SystemExit(
            f"{args.data / 'val.json'} not found: run benchmarks/accuracy_vs_cost_256.py first "
            f"(it makes the data), or pass --data"
        )
    for name in args.models:
        if not (HEADS / f"{name}.pt").exists():
            raise SystemExit(f"{HEADS / (name + '.pt')} not found (a head of the 256-px benchmark)")
    started = time.time()
    work = [
        (name, name if name.startswith("fixed-") else "dynamic", floor, str(args.data), args.max_images)
        for name in args.models
        for floor in args.floors
    ]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(run_one, *zip(*work)))
    full = next(
        (r["mask_gflops_per_instance"] for r in rows if r["head"] == "fixed-112" and r["score_floor"] == 0), None
    )
    result = {
        "data": str(args.data),
        "val_images": args.max_images,
        "rows": rows,
        "fixed112_gflops": full,
        "machine": {**machine(), "jobs": args.jobs},
        "date": datetime.date.today().isoformat(),
        "wall_time_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| model | score floor | segm AP | AP75 | boundary AP | GFLOPs/inst | vs fixed-112 | 14/28/56/112 |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        hist = r["resolution_histogram"] or {}
        share = f"{r['mask_gflops_per_instance'] / full:.0%}" if full else "—"
        print(
            f"| {r['head']} | {r['score_floor']:g} | {r['segm_AP']:.1f} | {r['segm_AP75']:.1f} | "
            f"{r['boundary_AP']:.1f} | {r['mask_gflops_per_instance']:.3f} | {share} | "
            f"{'/'.join(str(hist.get(k, hist.get(str(k), 0))) for k in (14, 28, 56, 112))} |"
        )
    print(f"wrote {args.out} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
