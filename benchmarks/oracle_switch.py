"""How good could a switch be? The oracle choice of resolution for a trained DynaMask head.

A diagnostic for the 256-px benchmark (issue 11): the same trained head, detector and detections,
but each detection's resolution chosen by an oracle that knows the ground truth — the stage whose
mask scores best on the switch's own training criterion (``selection_costs``: 1 − mask IoU plus
1 − boundary IoU against the ground-truth mask, on the RoI's pixel grid), traded against FLOPs with
one price λ set so that the mean mask GFLOPs per instance meets a target. Detections that match no
ground truth (box IoU < 0.5 with every object of their class) keep the learnt switch's choice (no
switch can know a detection is false; ``--unmatched 14`` stops them at 14 instead). The switch's
FLOPs are counted as for the learnt switch, so the two compare at equal cost. Choosing the best of
four masks per object is itself worth something: the oracle can beat fixed-112.

If the oracle at the learnt switch's cost is far above it, the switch is what holds the head
back; if it is not, the stages are — no switch could do better with them.

    python benchmarks/oracle_switch.py --head benchmarks/results/accuracy_vs_cost_256_heads/dynamic@0.4.pt

Writes ``benchmarks/results/oracle_switch_256.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from common import EVAL_KEYS, machine  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from dynamask.data import CocoInstanceDataset, collate_fn  # noqa: E402
from dynamask.engine.evaluate import evaluate  # noqa: E402
from dynamask.inference import model_from_checkpoint  # noqa: E402
from dynamask.models.geometry import roi_mask_targets  # noqa: E402
from dynamask.models.losses import selection_costs  # noqa: E402

KEEP = EVAL_KEYS


def stage_costs_per_detection(model, dataset, max_images: int | None, resolution: int = 112):
    """Run every stage for every detection (the head's ``choice_hook`` records the switch's choice
    and sends every RoI to the last stage) and score each stage's mask against
    the matched ground truth. Returns per image: (N×K selection costs, zero where unmatched;
    matched flags; the learnt switch's unconstrained choice)."""
    head = model.roi_heads.mask_branch
    captured: list = []
    learnt: list = []
    last = head.num_stages - 1

    def every_stage(choice, inp, counts):  # record the switch's own choice, then run every stage
        learnt.append(choice.cpu())
        return torch.full_like(choice, last)

    head.choice_hook = every_stage
    head.stage_log = captured  # every stage's mask logits, dense and point stages alike
    model.policy = "dynamic"
    model.eval()
    sizes = (model.transform.min_size[0], model.transform.max_size)
    per_image = []
    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), max_images or len(dataset))))
    loader = torch.utils.data.DataLoader(subset, batch_size=1, shuffle=False, collate_fn=collate_fn)
    try:
        with torch.inference_mode():
            for images, targets in loader:
                captured.clear()
                learnt.clear()
                if max(images[0].shape[-2:]) > sizes[1] or min(images[0].shape[-2:]) != sizes[0]:
                    raise SystemExit(
                        f"the oracle compares masks in image pixels: it needs images the model does "
                        f"not resize (min side {sizes[0]}, max {sizes[1]}); got {tuple(images[0].shape)}"
                    )
                out = model([torch.as_tensor(im).as_subclass(torch.Tensor) for im in images])[0]
                tgt = targets[0]
                boxes, labels = out["boxes"], out["labels"]
                n = boxes.shape[0]
                costs = torch.zeros((n, head.num_stages))
                matched = torch.zeros(n, dtype=torch.bool)
                gt_boxes = torch.as_tensor(tgt["boxes"]).as_subclass(torch.Tensor).float()
                if n and gt_boxes.shape[0]:
                    iou = box_iou(boxes, gt_boxes)
                    iou[labels[:, None] != torch.as_tensor(tgt["labels"])[None, :]] = 0
                    best, idx = iou.max(dim=1)
                    matched = best >= 0.5
                    if matched.any():
                        gt_masks = torch.as_tensor(tgt["masks"]).as_subclass(torch.Tensor)
                        m = matched.nonzero().squeeze(1)
                        target = roi_mask_targets(gt_masks[idx[m]], boxes[m], resolution, model.mask_geometry)
                        stage_logits = [c[m] for c in captured]
                        costs[m] = selection_costs(stage_logits, target, boxes[m]).cpu()
                own = learnt[0] if learnt else torch.zeros(n, dtype=torch.int64)
                per_image.append((costs, matched, own))
    finally:
        head.choice_hook = None
        head.stage_log = None
    return per_image


def oracle_choices(
    per_image, stage_gflops: torch.Tensor, target_gflops: float, iterations: int = 60, unmatched: str = "learnt"
):
    """Stage per detection minimising cost + λ·F_k/F_max, λ bisected so that the mean GFLOPs per
    detection meets ``target_gflops`` (at most, where reachable); unmatched detections keep the
    learnt switch's choice (``unmatched="learnt"``) or stop at stage 0 (``"14"``)."""
    costs = torch.cat([item[0] for item in per_image])
    matched = torch.cat([item[1] for item in per_image])
    fallback = (
        torch.cat([item[2] for item in per_image])
        if unmatched == "learnt"
        else torch.zeros(costs.shape[0], dtype=torch.int64)
    )
    frac = stage_gflops / stage_gflops[-1]

    def choose(lam: float) -> torch.Tensor:
        pick = (costs + lam * frac).argmin(dim=1)
        return torch.where(matched, pick, fallback)

    def mean_gflops(lam: float) -> float:
        return float(stage_gflops[choose(lam)].mean())

    lo, hi = 0.0, 1.0
    while mean_gflops(hi) > target_gflops and hi < 1e6:
        hi *= 2
    for _ in range(iterations):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_gflops(mid) > target_gflops else (lo, mid)
    pick = choose(hi)
    return list(pick.split([item[0].shape[0] for item in per_image])), hi


def forced_choices(choices_per_image: list):
    """A ``choice_hook`` that gives, one image per forward and in order, the given stages."""
    queue = list(choices_per_image)

    def forced(choice, inp, counts):
        assert len(counts) == 1, "one image per forward"
        wanted = queue.pop(0)
        if wanted.shape[0] != choice.shape[0]:
            raise RuntimeError("the detections changed between the oracle's pass and the evaluation")
        return wanted.to(choice.device)

    return forced


def evaluate_with_choices(model, dataset, choices_per_image: list, max_images: int | None) -> dict:
    """The standard evaluation with the head's choice replaced by the given per-image stages."""
    head = model.roi_heads.mask_branch
    head.choice_hook = forced_choices(choices_per_image)
    try:
        return evaluate(
            model=model,
            dataset=dataset,
            policy="dynamic",
            budget=1.0,
            device="cpu",
            progress=False,
            batch_size=1,
            max_images=max_images,
        )
    finally:
        head.choice_hook = None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--head",
        type=Path,
        default=HERE / "results" / "accuracy_vs_cost_256_heads" / "dynamic@0.4.pt",
        help="a trained DynaMask head file (or whole checkpoint)",
    )
    p.add_argument("--data", type=Path, default=ROOT / "runs" / "shapes_detail", help="the benchmark's dataset")
    p.add_argument(
        "--fractions",
        type=float,
        nargs="*",
        default=[0.4],
        help="oracle targets (at most) as fractions of fixed-112's mask GFLOPs per instance, besides the "
        "learnt switch's own cost",
    )
    p.add_argument("--out", type=Path, default=HERE / "results" / "oracle_switch_256.json")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--unmatched",
        choices=("learnt", "14"),
        default="learnt",
        help="stage of detections that match no object: the learnt switch's choice, or 14",
    )
    p.add_argument("--max-images", type=int, default=None, help="the first N validation images only (a quick check)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    dataset = CocoInstanceDataset(
        str(args.data / "val.json"), str(args.data / "val"), transforms=None, keep_empty=True, validate_masks=False
    )
    model, _ = model_from_checkpoint(str(args.head))
    head = model.roi_heads.mask_branch
    n = args.max_images
    learnt = evaluate(model=model, dataset=dataset, policy="dynamic", device="cpu", progress=False, max_images=n)
    full = evaluate(model=model, dataset=dataset, policy="fixed-112", device="cpu", progress=False, max_images=n)
    print(
        f"[learnt] segm {learnt['segm_AP']:.1f} boundary {learnt['boundary_AP']:.1f} "
        f"GFLOPs {learnt['mask_gflops_per_instance']:.4f}",
        flush=True,
    )
    per_image = stage_costs_per_detection(model, dataset, n)
    stage_gflops = head.stage_costs(with_switch=True).float() / 1e9
    rows = {"learnt switch": {k: learnt.get(k) for k in KEEP}, "fixed-112": {k: full.get(k) for k in KEEP}}
    targets = [("oracle at the learnt switch's cost", learnt["mask_gflops_per_instance"])]
    targets += [(f"oracle at {f:.0%} of fixed-112", f * full["mask_gflops_per_instance"]) for f in args.fractions]
    for name, gflops in targets:
        choices, lam = oracle_choices(per_image, stage_gflops, gflops, unmatched=args.unmatched)
        m = evaluate_with_choices(model, dataset, choices, n)
        rows[name] = {k: m.get(k) for k in KEEP} | {"price": lam, "target_gflops": gflops}
        print(
            f"[{name}] segm {m['segm_AP']:.1f} boundary {m['boundary_AP']:.1f} "
            f"GFLOPs {m['mask_gflops_per_instance']:.4f}",
            flush=True,
        )
    matched = int(sum(int(item[1].sum()) for item in per_image))
    result = {
        "head": str(
            args.head.relative_to(ROOT) if args.head.is_absolute() and args.head.is_relative_to(ROOT) else args.head
        ),
        "dataset": str(args.data),
        "val_images": n or len(dataset),
        "matched_detections": matched,
        "detections": int(sum(item[1].shape[0] for item in per_image)),
        "unmatched_stage": args.unmatched,
        "rows": rows,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "wall_time_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            result, indent=1, default=lambda o: {str(k): v for k, v in o.items()} if isinstance(o, dict) else str(o)
        )
        + "\n"
    )
    print(f"{'choice':38s} {'segm AP':>8s} {'bnd AP':>7s} {'GFLOPs/inst':>12s}  14/28/56/112  rho-in-size")
    for name, r in rows.items():
        hist = r["resolution_histogram"] or {}
        print(
            f"{name:38s} {r['segm_AP']:8.1f} {r['boundary_AP']:7.1f} {r['mask_gflops_per_instance']:12.4f}  "
            f"{'/'.join(str(hist.get(k, 0)) for k in (14, 28, 56, 112)):12s} {r['complexity_spearman_within_size']}"
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
