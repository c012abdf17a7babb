"""Where a training step's time goes: ``torch.profiler`` over one step of DynaMask and of
torchvision's Mask R-CNN in ``speed.py``'s training setting (R18-FPN, 2 shapes images of 256×256,
SGD; random init), top operators by self time.

    python benchmarks/profile_training.py [--top 12] [--device cpu]

Writes benchmarks/results/profile_training_<device>.json and prints one table per model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402


def build(which: str, size: int, device):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from dynamask.models import dynamask_resnet18_fpn

    torch.manual_seed(0)
    if which == "torchvision":
        return (
            MaskRCNN(
                resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5),
                num_classes=9,
                min_size=size,
                max_size=size,
            )
            .to(device)
            .train()
        )
    return (
        dynamask_resnet18_fpn(9, policy="dynamic", refinement="dense", min_size=size, max_size=size).to(device).train()
    )


def profile_step(which: str, size: int, batch: int, device, top: int) -> dict:
    from dynamask.data.shapes import make_shapes_tensors

    model = build(which, size, device)
    images, targets = make_shapes_tensors(batch, (size, size), seed=0)
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)

    def step():
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    step()  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [
        {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total, "calls": e.count}
        for e in events[:top]
    ]
    return {"step_s_profiled": seconds, "self_total_ms": total / 1e3, "top": rows}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    result = {
        "date": datetime.date.today().isoformat(),
        "device": platform.machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "setting": f"R18-FPN, {args.batch} x {args.size}x{args.size} shapes, SGD, one step after a warm-up",
        "models": {w: profile_step(w, args.size, args.batch, device, args.top) for w in ("torchvision", "dynamask")},
    }
    out = args.out or HERE / "results" / f"profile_training_{device.type}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for which, r in result["models"].items():
        print(f"\n{which}: profiled step {r['step_s_profiled']:.2f} s")
        print(f"{'operator':50s} {'self ms':>9s} {'share':>6s} {'calls':>6s}")
        for row in r["top"]:
            print(f"{row['op'][:50]:50s} {row['self_ms']:9.1f} {100 * row['share']:5.1f}% {row['calls']:6d}")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
