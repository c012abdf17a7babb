"""Every GPU check of the project in one run of about five minutes, results written as it goes.

Made for the GPU machine (torch ≥ 2.4, no pycocotools, no package registry): run from the
repository root with ``PYTHONPATH=src``; data come from the in-memory shapes generator, never from
COCO files. Sections, each saved to the results JSON as soon as it ends:

1. ``inference`` — ``speed.py``'s end-to-end comparison with torchvision's Mask R-CNN (R50-FPN,
   the same detector weights, 100 detections) at 800×1216; goals: dynamic ≤ 0.5× torchvision
   (stretch ≤ 0.33×), mask branch + paste ≤ 10 % of DynaMask's end-to-end time;
2. ``training`` — images/s and peak memory (``max_memory_allocated``) of both models at R50
   800×1216 with bf16 autocast, each model in processes of its own, medians of three;
3. ``shapes_training`` — 500 iterations of DynaMask R18-FPN on 256×256 shapes with bf16 autocast;
   goal: the mean loss of the last 50 iterations below half that of the first 50.

    bash tools/gpu_wheels.sh     # here, once: pydantic's wheels into .whl/ (the GPU machine has none)
    # on the GPU machine (device call carrying ".whl"):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
        PYTHONPATH=/tmp/site:src python benchmarks/gpu_check.py --out $OUT
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick   # plumbing, about a minute

Prints a short table last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import speed  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402


def _save(result: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, path)


def inference_section(args, device) -> dict:
    ns = argparse.Namespace(
        size=[128, 128] if args.quick else [800, 1216],
        batch=1,
        detections=10 if args.quick else 100,
        runs=1 if args.quick else 20,
        warmup=0 if args.quick else 3,
        parts_runs=1 if args.quick else 5,
        mix=(40.0, 30.0, 20.0, 10.0),
        mix_source="40/30/20/10 (no trained R50 switch offline)",
        fam="deform",
    )
    inf = speed.inference(ns, device)
    tv = inf["end_to_end"]["torchvision"]["median_s"]
    dyn = inf["end_to_end"]["dynamic"]["median_s"]
    parts = inf["parts"]["dynamic"]
    mask_share = (parts["mask branch"] + parts["paste+postprocess"]) / sum(parts.values())
    inf["summary"] = {
        "dynamic_vs_torchvision": dyn / tv,
        "goal_half": dyn / tv <= 0.5,
        "stretch_third": dyn / tv <= 0.33,
        "mask_and_paste_share": mask_share,
        "goal_mask_share_10pct": mask_share <= 0.10,
    }
    return inf


def training_section(args, device) -> dict:
    ns = argparse.Namespace(
        train_size=64 if args.quick else 256,
        train_batch=2,
        train_steps=1 if args.quick else 5,
        train_runs=1 if args.quick else 3,
        train_amp="bf16",
        threads=None,
        train_narrow=args.quick,
    )
    t = speed.training(ns, device)
    a, b = t["torchvision"], t["dynamask"]
    t["summary"] = {
        "images_per_s_ratio": b["images_per_s"] / a["images_per_s"],
        "peak_memory_ratio": b["peak_mib"] / max(a["peak_mib"], 1e-9),
    }
    return t


def shapes_training_section(args, device) -> dict:
    """A short real training run under AMP: the loss must fall (last-50 mean < first-50 mean / 2)."""
    from dynamask.data.shapes import make_shapes_tensors
    from dynamask.models import dynamask_resnet18_fpn

    iters, size, batch, window = (4, 64, 1, 2) if args.quick else (500, 256, 8, 50)
    torch.manual_seed(0)
    # --quick checks the plumbing: narrow models, since bf16 convolutions are emulated on most CPUs
    narrow = (
        dict(
            fpn_channels=64,
            box_representation_size=256,
            widths=(64, 32, 32, 16),
            box_batch_size_per_image=64,
            rpn_post_nms_top_n_train=100,
        )
        if args.quick
        else {}
    )
    model = (
        dynamask_resnet18_fpn(
            9,
            policy="dynamic",
            fam="deform",
            refinement="dense",
            min_size=size,
            max_size=size,
            mask_rois_per_image=16,
            **narrow,
        )
        .to(device)
        .train()
    )
    pool_images, pool_targets = make_shapes_tensors(batch * 8, (size, size), seed=0)
    pool_images = [im.to(device) for im in pool_images]
    pool_targets = [{k: v.to(device) for k, v in t.items()} for t in pool_targets]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    warmup = max(1, iters // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / warmup))
    g = torch.Generator().manual_seed(0)
    losses, started = [], time.time()
    for _ in range(iters):
        idx = torch.randint(0, len(pool_images), (batch,), generator=g).tolist()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss_dict = model([pool_images[i] for i in idx], [pool_targets[i] for i in idx])
        loss = sum(loss_dict.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    speed.sync(device)
    first, last = statistics.mean(losses[:window]), statistics.mean(losses[-window:])
    return {
        "iterations": iters,
        "image_size": size,
        "batch": batch,
        "amp": "bf16",
        "window": window,
        "first_mean_loss": first,
        "last_mean_loss": last,
        "goal_last_below_half_first": last < first / 2,
        "finite": all(x == x and abs(x) != float("inf") for x in losses),
        "seconds": time.time() - started,
        "losses": [round(x, 4) for x in losses],
    }


def table(result: dict) -> str:
    lines = [
        f"# {result['device']}, torch {result['torch']}, torchvision {result['torchvision']}, {result['date']}"
        + (" (quick: numbers meaningless)" if result["quick"] else "")
    ]
    if "inference" in result:
        s = result["inference"]["summary"]
        e = result["inference"]["end_to_end"]
        size = result["inference"]["image_size"]
        lines.append(
            f"inference {size[0]}x{size[1]}, {result['inference']['detections_per_image'][0]} dets: torchvision {e['torchvision']['median_s'] * 1e3:.1f} ms, "
            f"dynamic {e['dynamic']['median_s'] * 1e3:.1f} ms -> {s['dynamic_vs_torchvision']:.2f}x "
            f"(goal <= 0.5: {s['goal_half']}); mask branch + paste {100 * s['mask_and_paste_share']:.1f} % "
            f"(goal <= 10 %: {s['goal_mask_share_10pct']})"
        )
    if "training" in result:
        t = result["training"]
        a, b = t["torchvision"], t["dynamask"]
        lines.append(
            f"training {a['backbone']} {a['image_size'][0]}x{a['image_size'][1]} x{a['batch']}, bf16: "
            f"torchvision {a['images_per_s']:.2f} img/s {a['peak_mib']:.0f} MiB; dynamask "
            f"{b['images_per_s']:.2f} img/s ({t['summary']['images_per_s_ratio']:.2f}x) {b['peak_mib']:.0f} MiB "
            f"({t['summary']['peak_memory_ratio']:.2f}x)"
        )
    if "shapes_training" in result:
        s = result["shapes_training"]
        lines.append(
            f"shapes training {s['iterations']} it, bf16: loss {s['first_mean_loss']:.3f} -> "
            f"{s['last_mean_loss']:.3f} (goal last < first/2: {s['goal_last_below_half_first']}), "
            f"{s['seconds']:.0f} s"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the plumbing on any device")
    p.add_argument("--out", type=Path, default=HERE / "results", help="folder of gpu_check_<device>.json")
    p.add_argument("--skip", nargs="*", default=[], choices=("inference", "training", "shapes_training"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "gpu_check: --device cuda but torch sees no GPU (use --device cpu --quick to check the plumbing)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"gpu_check_{device.type}{'_quick' if args.quick else ''}.json"
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "quick": args.quick,
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    started = time.time()
    for name, fn in (
        ("inference", inference_section),
        ("training", training_section),
        ("shapes_training", shapes_training_section),
    ):
        if name in args.skip:
            continue
        t = time.time()
        print(f"[gpu_check] {name} ...", flush=True)
        result[name] = fn(args, device)
        result.setdefault("seconds", {})[name] = round(time.time() - t, 1)
        _save(result, path)
    result["wall_time_s"] = round(time.time() - started, 1)
    _save(result, path)
    print(f"wrote {path} in {result['wall_time_s']:.0f} s")
    print(table(result))


if __name__ == "__main__":
    main()
