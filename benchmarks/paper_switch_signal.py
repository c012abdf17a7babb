"""Why does the authors' switch send detailed outlines coarse? Its training signal, measured.

The authors' switch is trained by a straight-through Gumbel sample whose selected stage's *edge
loss* counts for the RoI (``DynaMaskHead._paper_switch_losses``): each stage's edge BCE against its
own edge target (a 1-px outline at 14, 28, 56 or 112), times the stage loss weight (0.25 / 0.5 /
0.75 / 1.0). On the 256-px benchmark its choices run *against* outline complexity (ρ −0.46 overall,
−0.58 within size). The hypothesis (issue #25, part 3): this signal is larger at the fine stages
for detailed outlines, so minimising it sends them coarse.

This script runs a trained head over training images with the ground-truth boxes as RoIs (what the
positive proposals are near) and reports, per RoI and stage: the raw edge loss, the weighted edge
loss the switch sees, and the cost switch's comparable signal — each stage's mask error against
*one* 112×112 target (``selection_costs``: 1 − mask IoU + 1 − boundary IoU). For each signal: its
argmin stage (what a switch minimising it alone would choose) and the Spearman ρ of that stage —
and of the fine-minus-coarse difference — with the object's outline complexity, over all RoIs and
within size bins (as the benchmark's ρ).

    python benchmarks/paper_switch_signal.py                          # paper@0.4, 300 training images
    python benchmarks/paper_switch_signal.py --head benchmarks/results/accuracy_vs_cost_256_heads/fixed-112.pt

Writes ``benchmarks/results/paper_switch_signal.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from common import machine  # noqa: E402

from dynamask.data import CocoInstanceDataset  # noqa: E402
from dynamask.engine.evaluate import SIZE_BINS, spearman_correlation, spearman_within_size_bins  # noqa: E402
from dynamask.inference import model_from_checkpoint  # noqa: E402
from dynamask.models import losses as L  # noqa: E402
from dynamask.models.policy import RESOLUTIONS  # noqa: E402
from dynamask.models.roi_utils import rois_with_batch_index  # noqa: E402

HEADS = HERE / "results" / "accuracy_vs_cost_256_heads"


@torch.inference_mode()
def collect(model, dataset: CocoInstanceDataset, images: int) -> dict[str, np.ndarray]:
    """Per ground-truth object of the first ``images`` images: raw and weighted edge loss and the
    selection cost of each stage, its outline complexity and its size √(w·h)."""
    head = model.mask_branch
    model.eval()
    rows = {"raw_edge": [], "weighted_edge": [], "selection_cost": [], "complexity": [], "size": []}
    with open(dataset.ann_file) as f:
        anns = json.load(f)["annotations"]
    for i in range(min(images, len(dataset))):
        image, target = dataset[i]
        ann_indices = dataset.annotation_indices(i).tolist()
        boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor).float()
        if boxes.shape[0] == 0:
            continue
        batch, _ = model.transform([torch.as_tensor(image).as_subclass(torch.Tensor).float()])
        if tuple(batch.image_sizes[0]) != tuple(image.shape[-2:]):
            raise SystemExit("the signal is measured on images the model does not resize (256-px benchmark data)")
        features = model.backbone(batch.tensors)
        rois = [boxes]
        labels = torch.as_tensor(target["labels"])
        masks = torch.as_tensor(target["masks"]).as_subclass(torch.Tensor)
        region = head.shared(head.roi_pool(features, rois, batch.image_sizes))
        stages = head.all_stages(region, features, rois_with_batch_index(rois), batch.image_sizes, labels)
        targets = L.downsample_targets(
            L.matched_mask_targets(
                [masks], rois, [torch.arange(boxes.shape[0])], RESOLUTIONS[-1], head.mask_geometry, batch.image_sizes
            ),
            RESOLUTIONS,
        )
        edges = [e for _, e in stages]
        rows["raw_edge"].append(head.stage_edge_losses(edges, targets, weighted=False).float())
        rows["weighted_edge"].append(head.stage_edge_losses(edges, targets).float())
        rows["selection_cost"].append(
            L.selection_costs([m for m, _ in stages], targets[RESOLUTIONS[-1]], boxes).float()
        )
        rows["complexity"].append(torch.tensor([float(anns[idx].get("complexity") or np.nan) for idx in ann_indices]))
        wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
        rows["size"].append((wh[:, 0] * wh[:, 1]).sqrt())
    return {k: torch.cat(v).numpy() for k, v in rows.items()}


def tercile_table(signal: np.ndarray, complexity: np.ndarray, size: np.ndarray) -> list[dict]:
    """Mean signal per stage for the least / middle / most complex third within each size bin."""
    edges = [0.0, *SIZE_BINS, float("inf")]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (size >= lo) & (size < hi)
        if in_bin.sum() < 9:
            continue
        cuts = np.quantile(complexity[in_bin], [1 / 3, 2 / 3])
        for name, sel in (
            ("simple", complexity <= cuts[0]),
            ("middle", (complexity > cuts[0]) & (complexity <= cuts[1])),
            ("detailed", complexity > cuts[1]),
        ):
            pick = in_bin & sel
            out.append(
                {
                    "size_bin": f"{lo:g}-{hi:g}",
                    "complexity": name,
                    "objects": int(pick.sum()),
                    "mean_per_stage": [round(float(v), 4) for v in signal[pick].mean(axis=0)],
                    "argmin_share_per_stage": [
                        round(float(v), 3)
                        for v in np.bincount(signal[pick].argmin(axis=1), minlength=signal.shape[1])
                        / max(int(pick.sum()), 1)
                    ],
                }
            )
    return out


def analyse(rows: dict[str, np.ndarray]) -> dict:
    ok = np.isfinite(rows["complexity"])
    cx, size = rows["complexity"][ok], rows["size"][ok]
    out = {}
    for name in ("raw_edge", "weighted_edge", "selection_cost"):
        signal = rows[name][ok]
        stage = signal.argmin(axis=1).astype(np.float64)
        fine_minus_coarse = signal[:, -1] - signal[:, 0]
        out[name] = {
            "mean_per_stage": [round(float(v), 4) for v in signal.mean(axis=0)],
            "argmin_histogram": {str(r): int((stage == k).sum()) for k, r in enumerate(RESOLUTIONS)},
            "rho_argmin_stage_vs_complexity": spearman_correlation(stage, cx),
            "rho_argmin_stage_vs_complexity_within_size": spearman_within_size_bins(stage, cx, size)[0],
            "rho_fine_minus_coarse_vs_complexity": spearman_correlation(fine_minus_coarse, cx),
            "rho_fine_minus_coarse_vs_complexity_within_size": spearman_within_size_bins(fine_minus_coarse, cx, size)[
                0
            ],
            "by_size_and_complexity": tercile_table(signal, cx, size),
        }
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", type=Path, default=HEADS / "paper@0.4.pt", help="a trained DynaMask head file")
    p.add_argument(
        "--data",
        type=Path,
        default=ROOT / "runs" / "shapes_detail",
        help="the 256-px benchmark's dataset (made by benchmarks/accuracy_vs_cost_256.py)",
    )
    p.add_argument("--images", type=int, default=300, help="training images measured")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "paper_switch_signal.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.data / "train.json").exists():
        raise SystemExit(
            f"{args.data / 'train.json'} not found: run benchmarks/accuracy_vs_cost_256.py (it makes "
            f"the data) or pass --data"
        )
    started = time.time()
    model, _ = model_from_checkpoint(str(args.head))
    dataset = CocoInstanceDataset(
        str(args.data / "train.json"), str(args.data / "train"), transforms=None, keep_empty=True, validate_masks=False
    )
    rows = collect(model, dataset, args.images)
    result = {
        "head": os.path.relpath(args.head.resolve(), ROOT),
        "data": os.path.relpath(args.data.resolve(), ROOT),
        "split": "train",
        "images": min(args.images, len(dataset)),
        "objects": int(rows["size"].shape[0]),
        "stage_loss_weights": list(model.mask_branch.stage_loss_weights),
        "signals": analyse(rows),
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "wall_time_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['objects']} objects in {result['images']} training images; head {result['head']}")
    print(
        "| signal | mean 14/28/56/112 | argmin 14/28/56/112 | ρ(argmin, cx) | within size | ρ(fine−coarse, cx) | within size |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    fmt = lambda v: "—" if v is None else f"{v:+.2f}"  # noqa: E731
    for name, s in result["signals"].items():
        print(
            f"| {name} | {' / '.join(f'{v:.3f}' for v in s['mean_per_stage'])} | "
            f"{'/'.join(str(v) for v in s['argmin_histogram'].values())} | {fmt(s['rho_argmin_stage_vs_complexity'])} | "
            f"{fmt(s['rho_argmin_stage_vs_complexity_within_size'])} | {fmt(s['rho_fine_minus_coarse_vs_complexity'])} | "
            f"{fmt(s['rho_fine_minus_coarse_vs_complexity_within_size'])} |"
        )
    print(f"wrote {args.out} in {result['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
