"""A fixed-seed 20-iteration training run, recorded as the reference for engine refactors.

Issue 15 splits the training engine into named parts with no change of behaviour. This script
trains a small DynaMask (ResNet-18-FPN, dynamic policy with the cost switch, 64-px shapes) for
20 iterations through the public ``train`` entry point and records

* every ``metrics.jsonl`` record with its timing fields removed, and
* for every tensor of the final weights: sha256 of its bytes, sum and norm,

into ``tests/data/reference_training_run.json``. It was run on the commit before the engine
split; ``tests/test_reference_run.py`` reruns it with today's code and compares. Only public API
is used, so the script runs on old commits too:

    PYTHONPATH=src python tools/reference_training_run.py [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

import torch

TIMING_FIELDS = ("time_per_iter", "data_time", "images_per_s", "time_s")
ITERATIONS = 20


def overrides(data: dict) -> dict:
    return {
        "data.train_json": data["train_json"],
        "data.train_images": data["train_dir"],
        "data.num_workers": 0,
        "model.backbone": "resnet18",
        "model.fam": "conv",
        "model.policy": "dynamic",
        "model.refinement": "dense",
        "model.rpn_pre_nms_top_n_train": 100,
        "model.rpn_post_nms_top_n_train": 50,
        "model.rpn_pre_nms_top_n_test": 50,
        "model.rpn_post_nms_top_n_test": 20,
        "model.box_batch_size_per_image": 16,
        "model.box_detections_per_img": 10,
        "input.min_size": 64,
        "input.max_size": 64,
        "solver.ims_per_batch": 2,
        "solver.max_iter": ITERATIONS,
        "solver.log_period": 1,
        "solver.checkpoint_period": 10,
        "solver.warmup_iters": 5,
        "solver.steps": [15],
        "solver.base_lr": 0.02,
        "test.eval_period": 0,
        "seed": 7,
    }


def strip_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


def weights_digest(state: dict) -> dict:
    """Per tensor: sha256 of its bytes (bit-for-bit check) and float sum / norm (tolerance check)."""
    out = {}
    for name, t in sorted(state.items()):
        t = t.detach().cpu().contiguous()
        f = t.double()
        out[name] = {
            "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest(),
            "sum": float(f.sum()),
            "norm": float(f.norm()),
        }
    return out


def reference_run(work_dir: str) -> dict:
    """Train the reference run in ``work_dir``; its stripped metrics and weight digest."""
    from dynamask.config import load_config
    from dynamask.data import generate_shapes_dataset
    from dynamask.engine.train import train

    work = Path(work_dir)
    data = generate_shapes_dataset(work / "shapes", 8, 2, image_size=64, seed=5)
    out = work / "run"
    train(load_config(None, overrides(data)), str(out), progress=False)
    with open(out / "metrics.jsonl", encoding="utf-8") as f:
        metrics = [strip_timing(json.loads(line)) for line in f if line.strip()]
    ckpt = torch.load(out / "model_final.pt", map_location="cpu", weights_only=False)
    state = ckpt.get("model", ckpt)
    return {"metrics": metrics, "weights": weights_digest(state)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the JSON here (default: print a summary)")
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"torch": torch.__version__, "iterations": ITERATIONS, **reference_run(tmp)}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    last = [r for r in result["metrics"] if "total_loss" in r][-1]
    print(
        f"{len(result['metrics'])} metrics records, last total_loss {last['total_loss']:.6f}, "
        f"{len(result['weights'])} weight tensors"
    )


if __name__ == "__main__":
    main()
