"""Mask-branch cost for 100 RoIs: time and measured FLOPs, as ratios to torchvision's 28×28 head
in the same run; plus pasting 100 masks (ours vs torchvision's per-mask loop).

    python benchmarks/mask_branch.py [--device cpu|cuda] [--rois 100] [--repeats 10] [--only REGEX --tag T]

Rows: torchvision's Mask R-CNN mask branch (RoIAlign + 4 convs + deconv + predictor), each
fixed-k r-FPN path (FAM with deformable conv, and fixed-112 / dynamic with torchvision's
deformable kernel forced and with the plain-conv FAM),
and the dynamic path with a forced 40/30/20/10 % mix of 14/28/56/112 (the switch still runs for
every RoI; only its decision is replaced, so the mix is the one asked for); the same heads with
point-sparse 56/112 stages (``model.refinement=points``, ``--points`` per RoI and stage), and their
time against the dense head's (``sparse_vs_dense_*``). Inputs are random
FPN features of a 512×512 (CPU) or 800×1216 (CUDA) image and random boxes; weights are random
(timing and FLOPs do not depend on them). FLOPs are measured with FlopCounterMode; the paths are
timed in turns (one call of each per round, median of the rounds), so that load on a shared machine
hits every path alike.
Writes benchmarks/results/mask_branch_<device>.json and prints a table last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import date

import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference, paste_masks_in_image
from torchvision.ops import MultiScaleRoIAlign

from dynamask.atomic import write_bytes_atomic
from dynamask.models import RESOLUTIONS
from dynamask.models.dynamask_head import DynaMaskHead
from dynamask.models.flops import count_flops
from dynamask.models.paste import paste_masks

NUM_CLASSES = 81


def fpn_features(height, width, device):
    g = torch.Generator().manual_seed(0)
    return {
        name: torch.randn(1, 256, height // s, width // s, generator=g).to(device)
        for name, s in (("0", 4), ("1", 8), ("2", 16), ("3", 32), ("pool", 64))
    }


def random_boxes(n, height, width, device):
    g = torch.Generator().manual_seed(1)
    side = torch.exp(torch.empty(n).uniform_(3.0, 6.0, generator=g))  # 20..400 px
    cx = torch.rand(n, generator=g) * width
    cy = torch.rand(n, generator=g) * height
    wh = torch.stack([side * (0.6 + 0.8 * torch.rand(n, generator=g)), side], 1)
    boxes = torch.stack([cx - wh[:, 0] / 2, cy - wh[:, 1] / 2, cx + wh[:, 0] / 2, cy + wh[:, 1] / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width - 1)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height - 1)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    return boxes.to(device)


class TorchvisionMaskBranch(torch.nn.Module):
    """torchvision's Mask R-CNN mask path, as its RoIHeads runs it at inference."""

    def __init__(self):
        super().__init__()
        self.pool = MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
        self.head = MaskRCNNHeads(256, [256, 256, 256, 256], 1)
        self.predictor = MaskRCNNPredictor(256, 256, NUM_CLASSES)

    def forward(self, features, boxes, labels, image_shapes):
        logits = self.predictor(self.head(self.pool(features, boxes, image_shapes)))
        return maskrcnn_inference(logits, labels)


def timed(fn, repeats, device):
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(2):
            fn()
        sync()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def timed_round_robin(fns, repeats, device):
    """Median seconds of each of ``fns``, timed in turns (one call of each per round), so that a
    change of load on a shared machine hits every path alike and the ratios stay fair."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = [[] for _ in fns]
    with torch.no_grad():
        for fn in fns:
            fn()
        sync()
        for _ in range(repeats):
            for fn, t in zip(fns, times):
                start = time.perf_counter()
                fn()
                sync()
                t.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def forced_mix(head, fractions, n):
    """Stop the RoIs at 14/28/56/112 in the proportions ``fractions`` through the head's
    ``choice_hook`` (the switch still runs and costs what it costs)."""
    counts = [round(f * n) for f in fractions]
    counts[-1] = n - sum(counts[:-1])
    forced = torch.cat([torch.full((c,), k, dtype=torch.int64) for k, c in enumerate(counts)])
    forced = forced[torch.randperm(n, generator=torch.Generator().manual_seed(2))]
    head.choice_hook = lambda choice, inp, counts: forced.to(choice.device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rois", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--points",
        type=int,
        nargs="+",
        default=[784, 1568],
        help="points per RoI and stage of the point-sparse rows (one set of rows per value)",
    )
    parser.add_argument(
        "--only",
        metavar="REGEX",
        help="time only the DynaMask rows whose name matches (re.search), beside torchvision's; the "
        "JSON is then mask_branch_<device>_<tag>.json",
    )
    parser.add_argument("--tag", default="only", help="file-name tag of an --only run")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    height, width = (800, 1216) if device.type == "cuda" else (512, 512)
    torch.manual_seed(0)
    features = fpn_features(height, width, device)
    boxes = [random_boxes(args.rois, height, width, device)]
    labels = [torch.randint(1, NUM_CLASSES, (args.rois,), generator=torch.Generator().manual_seed(3)).to(device)]
    shapes = [(height, width)]

    rows, runs = [], []
    tv = TorchvisionMaskBranch().to(device).eval()
    tv_flops, _ = count_flops(tv, features, boxes, labels, shapes)
    rows.append({"path": "torchvision Mask R-CNN 28x28 head", "gflops": tv_flops / 1e9})
    runs.append(lambda: tv(features, boxes, labels, shapes))

    # "deform" runs the device's default deformable kernel ("auto": gather form on CPU,
    # torchvision's op on CUDA); "deform-tv" forces torchvision's op; same weights.
    heads = {
        fam: DynaMaskHead(NUM_CLASSES, "dynamic", fam=fam, refinement="dense").to(device).eval()
        for fam in ("deform", "conv")
    }
    heads["deform-tv"] = (
        DynaMaskHead(NUM_CLASSES, "dynamic", fam="deform", deform_kernel="torchvision", refinement="dense")
        .to(device)
        .eval()
    )
    heads["deform-tv"].load_state_dict(heads["deform"].state_dict())
    # point-sparse 56/112 stages (model.refinement=points, issue 31), same widths otherwise
    for fam in ("deform", "conv"):
        for n in args.points:
            heads[f"{fam}, points {n}"] = (
                DynaMaskHead(NUM_CLASSES, "dynamic", fam=fam, refinement="points", refinement_points=n)
                .to(device)
                .eval()
            )
    sparse = [
        (f"{fam}, points {n}", name)
        for fam in ("deform", "conv")
        for n in args.points
        for name in ("fixed-56", "fixed-112", "dynamic 40/30/20/10")
    ]
    variants = (
        [("deform", f"fixed-{r}") for r in RESOLUTIONS]
        + [
            ("deform", "dynamic 40/30/20/10"),
            ("deform-tv", "fixed-112"),
            ("deform-tv", "dynamic 40/30/20/10"),
            ("conv", "fixed-112"),
            ("conv", "dynamic 40/30/20/10"),
        ]
        + sparse
    )
    if args.only:
        variants = [(fam, name) for fam, name in variants if re.search(args.only, f"DynaMask {name} (FAM {fam})")]
    for fam, name in variants:
        head = heads[fam]

        def run(head=head, name=name):
            # each variant sets its head's policy (and forced mix) before it runs: heads are shared
            head.choice_hook = None
            if name.startswith("dynamic"):
                head.policy = "dynamic"
                forced_mix(head, (0.4, 0.3, 0.2, 0.1), args.rois)
            else:
                head.policy = name
            return head.forward_infer(features, boxes, labels, shapes)

        flops, out = count_flops(run)
        reported = float(out[0]["mask_flops"].sum())
        rows.append({"path": f"DynaMask {name} (FAM {fam})", "gflops": flops / 1e9, "reported_gflops": reported / 1e9})
        runs.append(run)
    for row, ms in zip(rows, timed_round_robin(runs, args.repeats, device)):
        row["ms"] = ms * 1e3
    for row in rows:
        row["time_ratio"] = row["ms"] / rows[0]["ms"]
        row["flops_ratio"] = row["gflops"] / rows[0]["gflops"]

    paste_rows = []
    for m in (28, 112):
        g = torch.Generator().manual_seed(4)
        masks = torch.rand(args.rois, 1, m, m, generator=g).to(device)
        ours = timed(lambda: paste_masks(masks, boxes[0], (height, width)), args.repeats, device)  # noqa: B023 - timed() calls it within this iteration
        theirs = timed(lambda: paste_masks_in_image(masks, boxes[0], (height, width)), args.repeats, device)  # noqa: B023 - timed() calls it within this iteration
        paste_rows.append(
            {"mask_size": m, "ours_ms": ours * 1e3, "torchvision_ms": theirs * 1e3, "speedup": theirs / ours}
        )

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    )
    result = {
        "date": date.today().isoformat(),
        "device": device_name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image": [height, width],
        "rois": args.rois,
        "command": "python benchmarks/mask_branch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mask_branch": rows,
        "paste": paste_rows,
    }
    by_path = {r["path"]: r["ms"] for r in rows}
    mix = "dynamic 40/30/20/10"
    ratios = {
        "deform_vs_conv_fam_dynamic": (f"DynaMask {mix} (FAM deform)", f"DynaMask {mix} (FAM conv)"),
        "deform_tv_vs_conv_fam_dynamic": (f"DynaMask {mix} (FAM deform-tv)", f"DynaMask {mix} (FAM conv)"),
    }
    for fam in ("deform", "conv"):
        for n in args.points:
            for name in ("fixed-112", "dynamic 40/30/20/10"):
                key = f"sparse_vs_dense_{name.split()[0].replace('-', '')}_fam_{fam}_points_{n}"
                ratios[key] = (f"DynaMask {name} (FAM {fam}, points {n})", f"DynaMask {name} (FAM {fam})")
    for key, (a, b) in ratios.items():
        if a in by_path and b in by_path:  # (an --only run times some rows)
            result[key] = by_path[a] / by_path[b]
    result["only"] = args.only
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"mask_branch_{device.type}" + (f"_{args.tag}" if args.only else "") + ".json")
    write_bytes_atomic(path, json.dumps(result, indent=2).encode())

    print(
        f"# {device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.rois} RoIs, image {height}x{width}, {result['date']}  -> {path}"
    )
    print(f"{'mask branch':58s} {'ms':>9s} {'time x':>7s} {'GFLOPs':>8s} {'FLOPs x':>8s}")
    for r in rows:
        print(f"{r['path']:58s} {r['ms']:9.1f} {r['time_ratio']:7.2f} {r['gflops']:8.2f} {r['flops_ratio']:8.2f}")
    if "deform_tv_vs_conv_fam_dynamic" in result:
        print(
            f"dynamic mix, deformable FAM / plain-conv FAM: {result['deform_vs_conv_fam_dynamic']:.2f} "
            f"(torchvision's deform_conv2d: {result['deform_tv_vs_conv_fam_dynamic']:.2f})"
        )
    for key, value in result.items():
        if key.startswith("sparse_vs_dense"):
            print(f"{key}: {value:.3f}")
    print(f"{'paste 100 masks':44s} {'ours ms':>9s} {'tv ms':>9s} {'speedup':>8s}")
    for r in paste_rows:
        print(
            f"{'  at ' + str(r['mask_size']) + 'x' + str(r['mask_size']):44s} {r['ours_ms']:9.1f} "
            f"{r['torchvision_ms']:9.1f} {r['speedup']:8.1f}"
        )


if __name__ == "__main__":
    main()
