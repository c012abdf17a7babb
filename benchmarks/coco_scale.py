"""COCO scale on this machine: a synthetic COCO-format file of train2017's size, and what loading it costs.

Issue #26, part 1 (in progress): so far the file and the construction measurement.

* ``--fraction F`` of COCO train2017's size (118,287 images, 860,001 instance annotations), 80
  categories with COCO's ids, polygons of 6–40 vertices (a second part for one in ten), about 1 % crowd
  annotations as uncompressed RLE; every image 640×480, all of them hard links to one PNG (so a
  worker that loads items can be measured later without gigabytes of images).
* construction, each in a process of its own (peak RSS growth over the interpreter with the
  libraries imported, and wall time): ``json.load`` + pycocotools' index (the baseline) against
  ``dynamask.data.CocoInstanceDataset`` as training builds it (``validate_masks=True``).

    python benchmarks/coco_scale.py --fraction 0.1      # a tenth: ~12k images, minutes
    python benchmarks/coco_scale.py                     # the full size

Writes the data to ``runs/coco_scale_<fraction>/`` and the results to
``benchmarks/results/coco_scale.json`` (``--results``).
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

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

TRAIN2017_IMAGES, TRAIN2017_ANNOTATIONS = 118_287, 860_001
#: COCO's 80 category ids (1–90 with gaps)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
WIDTH, HEIGHT = 640, 480


def polygon(rng: np.random.Generator) -> tuple[list[list[float]], list[float]]:
    """A star-shaped polygon of 6–40 vertices (one part, a second for one object in ten — COCO's
    instances file averages about two dozen vertices per object); segmentation and bbox."""
    parts = []
    cx, cy = rng.uniform(40, WIDTH - 40), rng.uniform(40, HEIGHT - 40)
    scale = rng.uniform(4, 120)
    for _ in range(1 if rng.random() < 0.9 else 2):
        k = int(rng.integers(6, 41))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = scale * rng.uniform(0.4, 1.0, k)
        ox, oy = cx + rng.uniform(-scale, scale) * 0.3, cy + rng.uniform(-scale, scale) * 0.3
        xs = np.clip(ox + radii * np.cos(angles), 0, WIDTH - 1)
        ys = np.clip(oy + radii * np.sin(angles), 0, HEIGHT - 1)
        parts.append(np.round(np.stack([xs, ys], 1).reshape(-1), 2).tolist())
    pts = np.concatenate([np.asarray(p).reshape(-1, 2) for p in parts])
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return parts, [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def crowd_rle(rng: np.random.Generator) -> tuple[dict, list[float]]:
    """An uncompressed RLE of a filled rectangle (column-major counts, as COCO stores crowds)."""
    x0, y0 = int(rng.integers(0, WIDTH - 60)), int(rng.integers(0, HEIGHT - 60))
    w, h = int(rng.integers(20, 60)), int(rng.integers(20, 60))
    counts, pos = [], 0
    for col in range(x0, x0 + w):
        start = col * HEIGHT + y0
        counts += [start - pos, h]
        pos = start + h
    counts.append(WIDTH * HEIGHT - pos)
    return {"size": [HEIGHT, WIDTH], "counts": counts}, [float(x0), float(y0), float(w), float(h)]


def make_dataset(out: Path, fraction: float, seed: int = 0) -> Path:
    """Write ``out/annotations.json`` and ``out/images/`` (hard links to one PNG); returns the json."""
    from PIL import Image

    ann_file = out / "annotations.json"
    if ann_file.exists():
        return ann_file
    rng = np.random.default_rng(seed)
    n_images = max(1, round(TRAIN2017_IMAGES * fraction))
    n_anns = max(1, round(TRAIN2017_ANNOTATIONS * fraction))
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    source = out / "one.png"
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 127, np.uint8)).save(source)
    images = []
    for i in range(n_images):
        name = f"{i + 1:012d}.png"
        target = images_dir / name
        if not target.exists():
            os.link(source, target)
        images.append({"id": i + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
    owners = np.sort(rng.integers(1, n_images + 1, n_anns))
    annotations = []
    for j, image_id in enumerate(owners.tolist()):
        crowd = rng.random() < 0.01
        segmentation, bbox = crowd_rle(rng) if crowd else polygon(rng)
        annotations.append({"id": j + 1, "image_id": image_id, "category_id": int(rng.choice(COCO_IDS)),
                            "segmentation": segmentation, "bbox": bbox, "area": round(bbox[2] * bbox[3] * 0.6, 2),
                            "iscrowd": int(crowd)})
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in COCO_IDS]
    tmp = ann_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    os.replace(tmp, ann_file)
    return ann_file


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
import numpy as np
from pycocotools.coco import COCO
import dynamask.data
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
base = rss()
t = time.perf_counter()
if {which!r} == "pycocotools":
    with open({ann!r}) as f:
        data = json.load(f)
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
else:
    ds = dynamask.data.CocoInstanceDataset({ann!r}, {images!r})
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_growth_mib": peak - base, "held_rss_growth_mib": rss() - base}}))
"""


def measure(which: str, ann_file: Path, images: Path) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), which=which, ann=str(ann_file), images=str(images))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} construction failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=1.0, help="of COCO train2017's size")
    p.add_argument("--runs", type=int, default=1, help="processes per measurement (medians)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=HERE / "results" / "coco_scale.json")
    args = p.parse_args(argv)
    out = args.out or ROOT / "runs" / f"coco_scale_{args.fraction:g}"
    started = time.time()
    ann_file = make_dataset(out, args.fraction)
    print(f"[data] {ann_file} ({ann_file.stat().st_size / 2**20:.0f} MB)", flush=True)
    rows = {}
    for which in ("pycocotools", "dynamask"):
        runs = [measure(which, ann_file, out / "images") for _ in range(args.runs)]
        rows[which] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]} | {"runs": runs}
        print(f"[{which}] {rows[which]['seconds']:.1f} s, peak RSS +{rows[which]['peak_rss_growth_mib']:.0f} MiB, "
              f"held +{rows[which]['held_rss_growth_mib']:.0f} MiB", flush=True)
    result = {"fraction": args.fraction, "annotation_file_mb": ann_file.stat().st_size / 2**20,
              "construction": rows,
              "time_ratio": rows["dynamask"]["seconds"] / rows["pycocotools"]["seconds"],
              "goal_time_within_1.5x": rows["dynamask"]["seconds"] <= 1.5 * rows["pycocotools"]["seconds"],
              "goal_memory_no_more": rows["dynamask"]["peak_rss_growth_mib"] <= rows["pycocotools"]["peak_rss_growth_mib"],
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
              "date": datetime.date.today().isoformat(), "wall_time_s": round(time.time() - started, 1)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"dynamask / pycocotools construction time: {result['time_ratio']:.2f}x; wrote {args.results}")


if __name__ == "__main__":
    main()
