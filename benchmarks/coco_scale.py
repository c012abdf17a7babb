"""COCO scale on this machine: a synthetic COCO-format file of train2017's size, and what loading,
reading and evaluating it cost (issue #26, part 1).

* ``--fraction F`` of COCO train2017's size (118,287 images, 860,001 instance annotations), 80
  categories with COCO's ids, polygons of 6–40 vertices (a second part for one in ten), about 1 % crowd
  annotations as uncompressed RLE; every image 640×480, all of them hard links to one PNG.
* construction, each in a process of its own (wall time; peak and held RSS growth over the
  interpreter with the libraries imported): ``json.load`` + pycocotools' index (the baseline),
  ``dynamask.data.CocoInstanceDataset`` as training builds it (``validate_masks=True``), and the same
  class at ``--reference`` (the implementation before the flat records, extracted with ``git archive``).
* a DataLoader worker (``num_workers=1``) reading every item once (``--worker-items`` fewer): its
  private memory (psutil ``memory_full_info().uss``) before the first item and after the last, for
  this implementation and the reference one.
* ``--metrics``: a val2017-sized result set (5,000 images × 100 detections with RLE masks against
  36,781 ground-truth objects; scaled by ``--metrics-fraction``) scored by ``dynamask evaluate
  --results FILE.json --gt FILE.json`` in a process of its own: wall time and the peak RSS of its
  process tree (segm, bbox and boundary AP); ``--breakdown`` each kind in a process of its own,
  ``--metrics-reference REV`` the package at REV on the same set in the same run, the set's SHA-256.

    python benchmarks/coco_scale.py --fraction 0.1                  # a tenth: ~12k images, minutes
    python benchmarks/coco_scale.py --fraction 1 --skip-reference   # the full size
    python benchmarks/coco_scale.py --metrics-only                  # the val2017-sized result set
    python benchmarks/coco_scale.py --metrics-only --breakdown --metrics-reference c7fc88d  # and before (#32)

Writes the data to ``runs/coco_scale_<fraction>/`` and the results to
``benchmarks/results/coco_scale_<fraction>.json`` (``--results``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from common import machine, reference_source  # noqa: E402

TRAIN2017_IMAGES, TRAIN2017_ANNOTATIONS = 118_287, 860_001
#: COCO's 80 category ids (1–90 with gaps)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
WIDTH, HEIGHT = 640, 480
LINKS_PER_FILE = 50_000


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
    images = []
    for i in range(n_images):
        source = out / f"one_{i // LINKS_PER_FILE}.png"  # a file system allows ~65,000 links to one file
        if i % LINKS_PER_FILE == 0:
            Image.fromarray(np.full((HEIGHT, WIDTH, 3), 127, np.uint8)).save(source)
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
        annotations.append(
            {
                "id": j + 1,
                "image_id": image_id,
                "category_id": int(rng.choice(COCO_IDS)),
                "segmentation": segmentation,
                "bbox": bbox,
                "area": round(bbox[2] * bbox[3] * 0.6, 2),
                "iscrowd": int(crowd),
            }
        )
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in COCO_IDS]
    tmp = ann_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    os.replace(tmp, ann_file)
    return ann_file


VAL2017_IMAGES, VAL2017_ANNOTATIONS, DETECTIONS_PER_IMAGE = 5_000, 36_781, 100
REFERENCE = "c7f3185"  # the last commit before the flat records

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
elif {which!r} == "dynamask-cache":
    ds = dynamask.data.CocoInstanceDataset({ann!r}, {images!r}, cache_dir={cache!r})
else:
    ds = dynamask.data.CocoInstanceDataset({ann!r}, {images!r})
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_rss_growth_mib": peak - base, "held_rss_growth_mib": rss() - base}}))
"""

WORKER = r"""
import json, sys, time
sys.path.insert(0, {src!r})
import psutil, torch
import dynamask.data
ds = dynamask.data.CocoInstanceDataset({ann!r}, {images!r})
n = min(len(ds), {items})
def uss():
    return psutil.Process().memory_full_info().uss / 2**20
class Probe(torch.utils.data.Dataset):
    def __len__(self):
        return n
    def __getitem__(self, i):
        before = uss() if i == 0 else None
        image, target = ds[i]
        return before, (uss() if i in (0, n - 1) else None), int(target["boxes"].shape[0])
loader = torch.utils.data.DataLoader(Probe(), batch_size=None, num_workers=1, collate_fn=lambda x: x)
t = time.perf_counter()
before = first = after = None
instances = 0
for i, (b, a, k) in enumerate(loader):
    before = b if b is not None else before
    if a is not None:
        first = a if i == 0 else first
        after = a
    instances += k
print(json.dumps({{"items": n, "instances": instances, "seconds": time.perf_counter() - t,
                  "uss_before_mib": before, "uss_after_first_mib": first, "uss_after_mib": after,
                  "uss_growth_mib": after - before, "uss_growth_after_first_mib": after - first}}))
"""

#: the control run's allocator setting: large buffers always mmap-ed and returned when freed, so that
#: what stays private is what the process still holds or copied, not freed per-item buffers kept by malloc
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _child(code: str, what: str, env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=None if env is None else dict(os.environ, **env),
    )
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(which: str, ann_file: Path, images: Path, src: Path = ROOT / "src", cache: Path | None = None) -> dict:
    code = CHILD.format(src=str(src), which=which, ann=str(ann_file), images=str(images), cache=str(cache))
    return _child(code, f"{which} construction")


def measure_worker(ann_file: Path, images: Path, items: int, src: Path = ROOT / "src", env: dict | None = None) -> dict:
    code = WORKER.format(src=str(src), ann=str(ann_file), images=str(images), items=int(items))
    return _child(code, "worker pass", env)


# ---------------------------------------------------------------------------------------------
# a val2017-sized result set
# ---------------------------------------------------------------------------------------------
def make_result_set(out: Path, fraction: float = 1.0, seed: int = 0) -> tuple[Path, Path]:
    """``out/gt.json`` (val2017's image and object counts × ``fraction``) and ``out/results.json``
    (100 detections an image, RLE masks): a third of them jittered copies of ground-truth objects,
    so that the APs are neither 0 nor 100."""
    from pycocotools import mask as mask_utils

    gt_file, res_file = out / "gt.json", out / "results.json"
    if gt_file.exists() and res_file.exists():
        return gt_file, res_file
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_images = max(1, round(VAL2017_IMAGES * fraction))
    n_anns = max(1, round(VAL2017_ANNOTATIONS * fraction))
    images = [
        {"id": i + 1, "file_name": f"{i + 1:012d}.png", "width": WIDTH, "height": HEIGHT} for i in range(n_images)
    ]
    owners = np.sort(rng.integers(1, n_images + 1, n_anns))
    annotations, by_image = [], {}
    for j, image_id in enumerate(owners.tolist()):
        crowd = rng.random() < 0.01
        segmentation, bbox = crowd_rle(rng) if crowd else polygon(rng)
        ann = {
            "id": j + 1,
            "image_id": image_id,
            "category_id": int(rng.choice(COCO_IDS)),
            "segmentation": segmentation,
            "bbox": bbox,
            "area": round(bbox[2] * bbox[3] * 0.6, 2),
            "iscrowd": int(crowd),
        }
        annotations.append(ann)
        if not crowd:
            by_image.setdefault(image_id, []).append(ann)
    categories = [{"id": c, "name": f"category_{c}", "supercategory": "thing"} for c in COCO_IDS]
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    with open(res_file, "w") as f:
        f.write("[")
        first = True
        for image_id in range(1, n_images + 1):
            own = by_image.get(image_id, [])
            dets = []
            for d in range(DETECTIONS_PER_IMAGE):
                if own and d < 3 * len(own):  # near a ground-truth object
                    ann = own[d % len(own)]
                    jitter = rng.normal(0, 1.0 + d // len(own), 2)
                    parts = [(np.asarray(p).reshape(-1, 2) + jitter).reshape(-1).tolist() for p in ann["segmentation"]]
                    category = ann["category_id"]
                else:
                    parts, _ = polygon(rng)
                    category = int(rng.choice(COCO_IDS))
                rle = mask_utils.merge(mask_utils.frPyObjects(parts, HEIGHT, WIDTH))
                x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": category,
                        "score": round(float(rng.uniform(0.05, 1)), 4),
                        "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                        "segmentation": {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")},
                    }
                )
            for det in dets:
                f.write(("" if first else ",") + json.dumps(det))
                first = False
        f.write("]")
    return gt_file, res_file


def _run_tree(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run ``cmd``; wall seconds, the peak RSS (MiB) summed over its process tree sampled every
    0.1 s, and its stdout."""
    import psutil

    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0.0
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.1)
    seconds = time.perf_counter() - t
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{stderr[-3000:]}")
    return seconds, peak, stdout


BREAKDOWN = r"""
import json, sys, time
sys.path.insert(0, {src!r})
try:  # dynamask.evaluation (issue #32): flat results, each kind alone by clearing the others' flags
    from dynamask.coco_json import load_coco_json
    from dynamask.evaluation.coco_eval import compute_coco_metrics
    from dynamask.evaluation.results_file import read_results_file
    gt = load_coco_json({gt!r})
    entries = read_results_file({res!r}, gt)
    getattr(entries, "has_" + {{"segmentation": "mask", "bbox": "box"}}[{drop!r}])[:] = False
    cpu = None
except ImportError:  # before: COCO results dicts
    from dynamask.data import load_coco_json
    from dynamask.engine.evaluate import compute_coco_metrics, load_results_file
    gt = load_coco_json({gt!r})
    entries = load_results_file({res!r}, gt)
    drop = {drop!r}
    entries = [{{k: v for k, v in r.items() if k != drop}} for r in entries]
    cpu = 1
t = time.perf_counter()
m = compute_coco_metrics(gt, entries, max_dets=100, boundary={boundary!r}, cpu_count=cpu)
print(json.dumps({{"compute_seconds": time.perf_counter() - t, "cpu_count": cpu,
                  "AP": {{k: m[k] for k in ("bbox_AP", "segm_AP", "boundary_AP")}}}}))
"""


def measure_evaluate_results(gt_file: Path, res_file: Path, out: Path, src: Path = ROOT / "src") -> dict:
    """``dynamask evaluate --results`` in a process of its own (``src``'s package), a cold run (a
    fresh ``out``): wall time, the peak RSS summed over its process tree (sampled every 0.1 s) and
    the 1-minute load average before and after (a shared machine)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "dynamask",
        "evaluate",
        "--results",
        str(res_file),
        "--gt",
        str(gt_file),
        "--out",
        str(out),
    ]
    load_before = os.getloadavg()[0]
    seconds, peak, _ = _run_tree(cmd, _env(src))
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "seconds": seconds,
        "peak_rss_mib": peak,
        "command": " ".join(cmd[1:]),
        "load_avg_1min_before": load_before,
        "load_avg_1min_after": os.getloadavg()[0],
        "metrics": {k: metrics.get(k) for k in ("segm_AP", "bbox_AP", "boundary_AP", "num_detections")},
    }


def measure_breakdown(gt_file: Path, res_file: Path, src: Path = ROOT / "src") -> dict:
    """Each kind of AP alone, in a process of its own (``compute_coco_metrics`` on the loaded file:
    bbox without masks; segm without boxes; segm and boundary together — the boundary's share is
    their difference): the call's time and the process tree's peak RSS."""
    parts = {}
    for name, drop, boundary in (
        ("bbox", "segmentation", False),
        ("segm", "bbox", False),
        ("segm+boundary", "bbox", True),
    ):
        code = BREAKDOWN.format(src=str(src), gt=str(gt_file), res=str(res_file), drop=drop, boundary=boundary)
        wall, tree_peak, stdout = _run_tree([sys.executable, "-c", code], _env(src))
        parts[name] = json.loads(stdout.strip().splitlines()[-1]) | {"wall_seconds": wall, "peak_rss_mib": tree_peak}
        print(
            f"  [{name}] {parts[name]['compute_seconds']:.0f} s in compute_coco_metrics, peak RSS {tree_peak:.0f} MiB",
            flush=True,
        )
    return parts


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _env(src: Path = ROOT / "src") -> dict:
    return dict(os.environ, PYTHONPATH=str(src) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fraction", type=float, default=1.0, help="of COCO train2017's size")
    p.add_argument("--runs", type=int, default=1, help="processes per construction measurement (medians)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--reference", default=REFERENCE, help="the commit whose dataset is compared (git archive)")
    p.add_argument("--skip-reference", action="store_true", help="measure this implementation only")
    p.add_argument("--worker-items", type=int, default=None, help="items the worker reads (default: all)")
    p.add_argument("--skip-worker", action="store_true")
    p.add_argument("--cache", action="store_true", help="also the records cache: its first start and the next")
    p.add_argument("--metrics", action="store_true", help="also score a val2017-sized result set")
    p.add_argument("--metrics-only", action="store_true")
    p.add_argument("--metrics-fraction", type=float, default=1.0, help="of val2017's size")
    p.add_argument("--breakdown", action="store_true", help="with --metrics: each kind of AP in a process of its own")
    p.add_argument(
        "--breakdown-only",
        action="store_true",
        help="with --metrics-only: add the breakdown to the recorded results file, no new evaluate run",
    )
    p.add_argument(
        "--metrics-reference",
        metavar="REV",
        default=None,
        help="with --metrics: also score the result set with the package at REV (git archive), same run",
    )
    p.add_argument("--reference-breakdown", action="store_true", help="with --metrics-reference: its breakdown too")
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    started = time.time()
    result = {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    if not args.metrics_only:
        out = args.out or ROOT / "runs" / f"coco_scale_{args.fraction:g}"
        ann_file = make_dataset(out, args.fraction)
        images = out / "images"
        print(f"[data] {ann_file} ({ann_file.stat().st_size / 2**20:.0f} MB)", flush=True)
        sources = {"dynamask": ROOT / "src"}
        if not args.skip_reference:
            sources[f"dynamask@{args.reference}"] = reference_source(
                args.reference, ROOT / "runs" / "coco_scale_reference"
            )
        rows = {}
        for which in ["pycocotools", *sources]:
            runs = [
                measure(
                    "pycocotools" if which == "pycocotools" else "dynamask",
                    ann_file,
                    images,
                    sources.get(which, ROOT / "src"),
                )
                for _ in range(args.runs)
            ]
            rows[which] = {k: float(np.median([r[k] for r in runs])) for k in runs[0]} | {"runs": runs}
            print(
                f"[construct {which}] {rows[which]['seconds']:.1f} s, peak RSS +{rows[which]['peak_rss_growth_mib']:.0f} MiB, "
                f"held +{rows[which]['held_rss_growth_mib']:.0f} MiB",
                flush=True,
            )
        if args.cache:  # data.cache_records: the first start writes the records, the next ones map them
            cache = out / "records_cache"
            shutil.rmtree(cache, ignore_errors=True)
            fill = measure("dynamask-cache", ann_file, images, cache=cache)
            hits = [measure("dynamask-cache", ann_file, images, cache=cache) for _ in range(args.runs)]
            rows["dynamask (cache: first start)"] = {k: float(v) for k, v in fill.items()}
            rows["dynamask (cache: next starts)"] = {k: float(np.median([r[k] for r in hits])) for k in hits[0]} | {
                "runs": hits
            }
            for which in ("dynamask (cache: first start)", "dynamask (cache: next starts)"):
                print(
                    f"[construct {which}] {rows[which]['seconds']:.1f} s, peak RSS +{rows[which]['peak_rss_growth_mib']:.0f} MiB, "
                    f"held +{rows[which]['held_rss_growth_mib']:.0f} MiB",
                    flush=True,
                )
        base, ours = rows["pycocotools"], rows["dynamask"]
        result.update(
            {
                "fraction": args.fraction,
                "annotation_file_mb": ann_file.stat().st_size / 2**20,
                "construction": rows,
                "time_ratio": ours["seconds"] / base["seconds"],
                "goal_time_within_1.5x": ours["seconds"] <= 1.5 * base["seconds"],
                "goal_memory_no_more": ours["peak_rss_growth_mib"] <= base["peak_rss_growth_mib"],
            }
        )
        if not args.skip_worker:
            items = args.worker_items or 10**9
            workers = {}
            for allocator, env in (("default", None), ("fixed_mmap_threshold", FIXED_MMAP_THRESHOLD)):
                for name, src in sources.items():
                    w = measure_worker(ann_file, images, items, src, env)
                    workers.setdefault(allocator, {})[name] = w
                    print(
                        f"[worker {name}, {allocator} malloc] {w['items']} items in {w['seconds']:.0f} s: USS "
                        f"{w['uss_before_mib']:.0f} -> {w['uss_after_first_mib']:.0f} after the first item -> "
                        f"{w['uss_after_mib']:.0f} MiB after the last (+{w['uss_growth_mib']:.0f}; "
                        f"+{w['uss_growth_after_first_mib']:.0f} after the first)",
                        flush=True,
                    )
            result["worker"] = workers
            ratios = {}
            for allocator, ws in workers.items():
                ref = next((w for n, w in ws.items() if n != "dynamask"), None)
                if ref is not None:
                    ratios[allocator] = {
                        key: ws["dynamask"][key] / ref[key] if ref[key] > 0 else None
                        for key in ("uss_growth_mib", "uss_growth_after_first_mib")
                    }
            if ratios:
                result["worker_growth_ratio"] = ratios
                result["goal_worker_within_10pct"] = ratios["default"]["uss_growth_mib"] <= 0.10
    if args.metrics or args.metrics_only:
        mout = ROOT / "runs" / f"coco_scale_val_{args.metrics_fraction:g}"
        gt_file, res_file = make_result_set(mout, args.metrics_fraction)
        print(f"[results] {res_file} ({res_file.stat().st_size / 2**20:.0f} MB)", flush=True)
        name = f"coco_scale_metrics_{args.metrics_fraction:g}.json"
        previous = HERE / "results" / name
        if args.breakdown_only and previous.exists():  # add the breakdown to the recorded run
            result = json.loads(previous.read_text())
            m = result["evaluate_results"]
        else:
            m = measure_evaluate_results(gt_file, res_file, mout / "eval")
            m.update(metrics_fraction=args.metrics_fraction, results_file_mb=res_file.stat().st_size / 2**20)
            print(
                f"[evaluate --results] {m['seconds']:.0f} s, peak RSS {m['peak_rss_mib']:.0f} MiB: {m['metrics']}",
                flush=True,
            )
        if args.breakdown or args.breakdown_only:
            m["breakdown"] = measure_breakdown(gt_file, res_file)
            m["breakdown_date"] = datetime.date.today().isoformat()
        result["evaluate_results"] = m
        result["result_set_sha256"] = {"results.json": sha256(res_file), "gt.json": sha256(gt_file)}
        if args.metrics_reference:  # today's path before the change, in the same run
            src = reference_source(args.metrics_reference, ROOT / "runs" / "coco_scale_reference")
            ref = measure_evaluate_results(gt_file, res_file, mout / "eval_reference", src)
            ref["source"] = f"git archive {args.metrics_reference} src/dynamask"
            print(
                f"[evaluate --results @{args.metrics_reference}] {ref['seconds']:.0f} s, peak RSS "
                f"{ref['peak_rss_mib']:.0f} MiB: {ref['metrics']}",
                flush=True,
            )
            if args.reference_breakdown:
                ref["breakdown"] = measure_breakdown(gt_file, res_file, src)
            result["evaluate_results_reference"] = ref
            result["same_metrics_as_reference"] = {
                k: abs(m["metrics"][k] - ref["metrics"][k]) < 1e-4 * 100 for k in ("segm_AP", "bbox_AP", "boundary_AP")
            }
        result["goals"] = {
            "wall_s_at_most_90": m["seconds"] <= 90.0,
            "peak_rss_at_most_1.5_GiB": m["peak_rss_mib"] <= 1536.0,
        }
        print(f"goals: {result['goals']}", flush=True)
    result["wall_time_s"] = round(time.time() - started, 1)
    name = (
        f"coco_scale_{args.fraction:g}.json"
        if not args.metrics_only
        else f"coco_scale_metrics_{args.metrics_fraction:g}.json"
    )
    path = args.results or HERE / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    if "time_ratio" in result:
        print(f"dynamask / pycocotools construction time: {result['time_ratio']:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
