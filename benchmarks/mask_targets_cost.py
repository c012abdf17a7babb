"""What taking the mask targets from the original-resolution masks costs in training, against
resizing the mask bitmaps with the image (``model.mask_targets`` original vs resized), measured in
the same run on the same inputs.

Two settings, each a training step of the full pipeline — the dataset transform (flip, resize,
sanitize) on every sample, then the model's forward, backward and optimiser step:

* ``256``: the resized-targets benchmark's setting — detailed shapes rendered at 512 px, input
  256, ResNet-18-FPN with the 256-px benchmark's fixed-112 head (``configs/shapes_detail_detector_r18.yaml``);
* ``800``: COCO-like — 480×640 images upscaled to 800/1333, the same model.

Each (setting, mode) runs in a process of its own (so that peak memory is its own), the modes
interleaved ``--runs`` times; medians. Reports step time, dataset-transform time per image and
the growth of peak RSS, and the ratio original / resized.

    python benchmarks/mask_targets_cost.py            # about 5 min on 2 cores
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

KEYS = ("step_s", "transform_s_per_image", "target_path_s", "mask_mib_per_batch", "peak_rss_growth_mib")
SETTINGS = {
    "256": {"render": (512, 512), "min_size": 256, "max_size": 256, "batch": 4},
    "800": {"render": (480, 640), "min_size": 800, "max_size": 1333, "batch": 2},
}


def child(setting: str, mode: str, steps: int) -> None:
    import resource

    import torch
    from torchvision import tv_tensors

    from dynamask.config import load_config
    from dynamask.data import build_transforms, make_shapes_tensors
    from dynamask.models.detector import build_model

    s = SETTINGS[setting]
    torch.manual_seed(0)
    cfg = load_config(
        str(ROOT / "configs" / "shapes_detail_detector_r18.yaml"),
        [
            "model.head=dynamask",
            "model.policy=fixed-112",
            "model.refinement=dense",
            "model.head_widths=[64,43,32,21]",
            f"model.mask_targets={mode}",
            f"input.min_size={s['min_size']}",
            f"input.max_size={s['max_size']}",
        ],
    )
    model = build_model(cfg, 15).train()
    images, targets = make_shapes_tensors(s["batch"], s["render"], seed=1, detail=True)
    transform = build_transforms(
        True,
        min_size=s["min_size"],
        max_size=s["max_size"],
        flip_prob=0.5,
        color_jitter=False,
        resize_masks=mode == "resized",
    )
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def samples():
        out_i, out_t = [], []
        for img, t in zip(images, targets):
            h, w = img.shape[-2:]
            i2, t2 = transform(
                tv_tensors.Image(img),
                {
                    "boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=(h, w)),
                    "masks": tv_tensors.Mask(t["masks"]),
                    "labels": t["labels"],
                },
            )
            out_i.append(i2.as_subclass(torch.Tensor))
            out_t.append({k: v.as_subclass(torch.Tensor) for k, v in t2.items()})
        return out_i, out_t

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_times, transform_times = [], []
    for i in range(steps + 1):
        torch.manual_seed(i)
        t0 = time.perf_counter()
        ims, tgs = samples()
        t1 = time.perf_counter()
        losses = model(ims, tgs)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        t2 = time.perf_counter()
        if i:  # the first step warms up
            transform_times.append((t1 - t0) / len(ims))
            step_times.append(t2 - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    # the only parts that differ between the modes: the model's resize of the targets and the
    # 112×112 targets of every ground-truth box (as RoIs), timed alone; and the masks' bytes
    from dynamask.models.losses import matched_mask_targets

    ims, tgs = samples()
    path_times = []
    for _ in range(10):
        t0 = time.perf_counter()
        batch, moved = model.transform(ims, [dict(t) for t in tgs])
        matched_mask_targets(
            [t["masks"] for t in moved],
            [t["boxes"] for t in moved],
            [torch.arange(t["boxes"].shape[0]) for t in moved],
            112,
            "exact",
            batch.image_sizes,
        )
        path_times.append(time.perf_counter() - t0)
    mask_bytes = sum(t["masks"].numel() * t["masks"].element_size() for t in moved)
    print(
        json.dumps(
            {
                "step_s": statistics.median(step_times),
                "transform_s_per_image": statistics.median(transform_times),
                "target_path_s": statistics.median(path_times),
                "mask_mib_per_batch": mask_bytes / 2**20,
                "peak_rss_growth_mib": peak,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="processes per (setting, mode), interleaved")
    p.add_argument("--steps", type=int, default=4, help="timed steps per process (after one warm-up step)")
    p.add_argument("--settings", default="256,800")
    p.add_argument("--results", type=Path, default=HERE / "results" / "mask_targets_cost.json")
    p.add_argument("--child", nargs=2, metavar=("SETTING", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.steps)
        return
    started = time.time()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if x),
    }
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_at_start": os.getloadavg(),
        },
        "command": "python benchmarks/mask_targets_cost.py " + " ".join(argv or sys.argv[1:]),
        "settings": {},
    }
    for setting in args.settings.split(","):
        runs = {"resized": [], "original": []}
        for _ in range(args.runs):
            for mode in runs:
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", setting, mode, "--steps", str(args.steps)],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                if proc.returncode != 0:
                    raise SystemExit(f"{setting}/{mode} failed:\n{proc.stderr[-3000:]}")
                runs[mode].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"[{setting}] {mode}: {runs[mode][-1]}", flush=True)
        med = {m: {k: statistics.median(r[k] for r in rs) for k in KEYS} for m, rs in runs.items()}
        result["settings"][setting] = {
            **SETTINGS[setting],
            "median": med,
            "runs": runs,
            "step_ratio_original_vs_resized": med["original"]["step_s"] / med["resized"]["step_s"],
            "transform_ratio_original_vs_resized": (
                med["original"]["transform_s_per_image"] / med["resized"]["transform_s_per_image"]
            ),
            "target_path_ratio_original_vs_resized": med["original"]["target_path_s"] / med["resized"]["target_path_s"],
            "peak_mib_original_minus_resized": (
                med["original"]["peak_rss_growth_mib"] - med["resized"]["peak_rss_growth_mib"]
            ),
        }
    result["machine"]["load_at_end"] = os.getloadavg()
    result["wall_time_s"] = round(time.time() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(
        "| setting | mode | step s | dataset transform s/image | target path s | masks MiB/batch | peak RSS growth MiB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for setting, r in result["settings"].items():
        for m in ("resized", "original"):
            x = r["median"][m]
            print(
                f"| {setting} | {m} | {x['step_s']:.3f} | {x['transform_s_per_image']:.4f} | {x['target_path_s']:.4f} "
                f"| {x['mask_mib_per_batch']:.1f} | {x['peak_rss_growth_mib']:.0f} |"
            )
        print(
            f"| {setting} | original / resized | {r['step_ratio_original_vs_resized']:.3f} "
            f"| {r['transform_ratio_original_vs_resized']:.3f} | {r['target_path_ratio_original_vs_resized']:.3f} "
            f"| | {r['peak_mib_original_minus_resized']:+.0f} |"
        )
    print(f"wrote {args.results} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
