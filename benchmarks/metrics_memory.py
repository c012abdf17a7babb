"""Peak memory of :func:`dynamask.engine.evaluate.compute_coco_metrics` on a large synthetic
result set, now and at a reference commit (issue #26: the metrics used to deep-copy the results
and the ground truth for every evaluator; now each evaluator gets new top-level dicts only).

Each measurement runs in a fresh process: build the gt (polygon and RLE masks) and the results,
read the resident set size, call ``compute_coco_metrics``, read the peak (``ru_maxrss``); the
growth is peak minus the RSS before the call. Both versions must return the same numbers.

    .venv/bin/python benchmarks/metrics_memory.py [--images 1500 --dets 40 --reference c7f3185]

Writes ``benchmarks/results/metrics_memory.json``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from common import cpu_model  # noqa: E402


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _data(n_images: int, n_gt: int, n_dets: int, size: int, seed: int = 0):
    import numpy as np
    from pycocotools import mask as mu

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images, anns, results = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i:06d}.png", "height": size, "width": size})
        for k in range(n_gt):
            cx, cy = rng.uniform(10, size - 10, 2)
            ax, ay = rng.uniform(4, size / 4, 2)
            if k % 2:  # a polygon (an ellipse's outline)
                t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
                poly = np.stack([cx + ax * np.cos(t), cy + ay * np.sin(t)], 1).clip(0, size - 1)
                seg = [poly.reshape(-1).round(2).tolist()]
            else:
                m = (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1).astype(np.uint8)
                r = mu.encode(np.asfortranarray(m))
                seg = {"size": [size, size], "counts": r["counts"].decode()}
            x0, y0 = max(cx - ax, 0), max(cy - ay, 0)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": 1 + k % 3,
                    "segmentation": seg,
                    "bbox": [x0, y0, min(cx + ax, size) - x0, min(cy + ay, size) - y0],
                    "area": float(np.pi * ax * ay),
                    "iscrowd": 0,
                }
            )
        masks = np.zeros((size, size, n_dets), np.uint8, order="F")
        boxes = []
        for d in range(n_dets):
            cx, cy = rng.uniform(10, size - 10, 2)
            ax, ay = rng.uniform(4, size / 4, 2)
            masks[:, :, d] = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
            boxes.append([max(cx - ax, 0), max(cy - ay, 0), 2 * ax, 2 * ay])
        for d, r in enumerate(mu.encode(masks)):
            results.append(
                {
                    "image_id": i,
                    "category_id": 1 + d % 3,
                    "bbox": [round(v, 2) for v in boxes[d]],
                    "score": round(float(rng.random()), 5),
                    "segmentation": {"size": [size, size], "counts": r["counts"].decode()},
                    "mask_resolution": 28,
                    "mask_flops": 1.0e6,
                }
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
    return gt, results


def _measure(module_path: str, args) -> dict:
    """In this (fresh) process: compute_coco_metrics from ``module_path``, RSS growth and time."""
    import warnings

    warnings.simplefilter("ignore")
    spec = importlib.util.spec_from_file_location("dynamask.engine._measured_evaluate", module_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gt, results = _data(args.images, args.gt, args.dets, args.size)
    before = _rss_mib()
    t0 = time.perf_counter()
    metrics = mod.compute_coco_metrics(gt, results, max_dets=100, cpu_count=1)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak, 1),
        "growth_mib": round(peak - before, 1),
        "seconds": round(seconds, 1),
        "metrics": metrics,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--gt", type=int, default=8, help="gt instances per image (half polygons)")
    ap.add_argument("--dets", type=int, default=40, help="detections per image")
    ap.add_argument("--size", type=int, default=128, help="image side")
    ap.add_argument("--reference", default="c7f3185", help="commit whose evaluate.py is the 'before'")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "metrics_memory.json"))
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        print(json.dumps(_measure(args._measure, args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "evaluate_before.py")
        text = subprocess.run(
            ["git", "-C", ROOT, "show", f"{args.reference}:src/dynamask/engine/evaluate.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        with open(old, "w") as f:
            f.write(text)
        new = os.path.join(ROOT, "src", "dynamask", "engine", "evaluate.py")
        common = [
            "--images",
            str(args.images),
            "--gt",
            str(args.gt),
            "--dets",
            str(args.dets),
            "--size",
            str(args.size),
        ]
        runs = {}
        for name, path in (("before", old), ("after", new)):
            proc = subprocess.run(
                [sys.executable, __file__, "--_measure", path, *common], capture_output=True, text=True, check=True
            )
            runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{name:>6}: +{runs[name]['growth_mib']:.0f} MiB over {runs[name]['rss_before_mib']:.0f} MiB "
                f"(peak {runs[name]['peak_rss_mib']:.0f} MiB), {runs[name]['seconds']:.1f} s"
            )
    same = runs["before"].pop("metrics") == runs["after"].pop("metrics")
    print(f"same metrics: {same}")
    report = {
        "what": "peak RSS growth of compute_coco_metrics (bbox, segm, boundary AP) on synthetic data",
        "images": args.images,
        "gt_per_image": args.gt,
        "results": args.images * args.dets,
        "image_size": args.size,
        "reference_commit": args.reference,
        "before": runs["before"],
        "after": runs["after"],
        "growth_saved_mib": round(runs["before"]["growth_mib"] - runs["after"]["growth_mib"], 1),
        "same_metrics": same,
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/metrics_memory.py " + " ".join(sys.argv[1:]),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.out}")
    if not same:
        sys.exit("the metrics differ between the two versions")


if __name__ == "__main__":
    main()
