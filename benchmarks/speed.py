"""End-to-end inference speed and training throughput / peak memory against torchvision's
Mask R-CNN, measured in the same run on the same inputs.

Inference: ``dynamask_resnet50_fpn`` (dynamic policy) and torchvision's ``maskrcnn_resnet50_fpn``
with identical detection settings — and the *same* detector weights (torchvision's random init
is copied into DynaMask's backbone, FPN, RPN and box head), so both return exactly the same 100
boxes per image and differ only in the mask branch and the mask pasting. Timings are medians of
``--runs`` forward passes after warm-up, the two models interleaved so that machine load hits
both alike; a per-part breakdown (transform, backbone, RPN, box head, mask branch, paste) shows
where the time goes. No trained R50 weights exist offline, and a randomly initialised switch
makes arbitrary choices, so the dynamic row stops instances at 14/28/56/112 in the proportions
``--mix`` — by default the histogram the trained dynamic@0.4 head chose in
benchmarks/accuracy_vs_cost.py; the switch still runs and is paid for. fixed-28 and fixed-112
rows show the two ends.

Training: images/s and peak memory of a few optimiser steps (``--train-steps``) of DynaMask (dense
and with point-sparse 56/112 stages, ``model.refinement=points``) and torchvision Mask R-CNN on the
same synthetic batch, each in its own process (growth of peak RSS on
CPU, ``torch.cuda.max_memory_allocated`` on CUDA), ``--train-runs`` processes per model, medians.

    python benchmarks/speed.py                      # CPU, 512×512, R50 — about 5 min on 2 cores
    python benchmarks/speed.py --device cuda        # 800×1216, R50 inference and training

Last line: ``speed ratio (dynamask / torchvision): X`` (end-to-end inference, dynamic). Results go to
benchmarks/results/speed_<device>_<fam>.json.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402

from dynamask.atomic import write_bytes_atomic  # noqa: E402
from dynamask.models import dynamask_resnet50_fpn  # noqa: E402

NUM_CLASSES = 91  # COCO-sized heads, as users run them


def detection_settings(size: tuple[int, int], detections: int = 100) -> dict:
    """Identical for both models: every image gives exactly ``detections`` detections (score 0 kept)."""
    return dict(min_size=min(size), max_size=max(size), box_score_thresh=0.0, box_detections_per_img=detections)


def build_pair(size, policy: str, mix, device, fam: str = "deform", detections: int = 100):
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **detection_settings(size, detections)
    )
    ours = dynamask_resnet50_fpn(
        NUM_CLASSES, policy="dynamic", fam=fam, refinement="dense", **detection_settings(size, detections)
    )
    detector = {k: v for k, v in tv.state_dict().items() if not k.startswith("roi_heads.mask_")}
    ours.load_detector_state(detector)
    ours.policy = policy
    force_mix(ours, mix)
    return tv.eval().to(device), ours.eval().to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def staged(model, images, device) -> dict:
    """The forward pass of either model split into its parts, each timed; the same computation
    as ``model(images)`` (torchvision's GeneralizedRCNN / RoIHeads steps, called one by one)."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    times = {}

    def tick(name, fn, *a):
        sync(device)
        t = time.perf_counter()
        out = fn(*a)
        sync(device)
        times[name] = time.perf_counter() - t
        return out

    original_sizes = [img.shape[-2:] for img in images]
    image_list, _ = tick("transform", model.transform, images)
    sizes = image_list.image_sizes
    features = tick("backbone+fpn", model.backbone, image_list.tensors)
    proposals, _ = tick("rpn", model.rpn, image_list, features)
    heads = model.roi_heads

    def box_part():
        x = heads.box_head(heads.box_roi_pool(features, proposals, sizes))
        return heads.postprocess_detections(*heads.box_predictor(x), proposals, sizes)

    boxes, scores, labels = tick("box head", box_part)
    detections = [{"boxes": b, "labels": lab, "scores": s} for b, s, lab in zip(boxes, scores, labels)]
    if hasattr(heads, "mask_branch"):
        extra = tick("mask branch", heads.mask_branch.forward_infer, features, boxes, labels, sizes)
    else:

        def tv_mask():
            x = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, sizes)))
            return [{"masks": m} for m in maskrcnn_inference(x, labels)]

        extra = tick("mask branch", tv_mask)
    for d, e in zip(detections, extra):
        d.update(e)
    tick("paste+postprocess", model.transform.postprocess, detections, sizes, original_sizes)
    return times


def force_mix(model, mix: tuple[float, ...], seed: int = 0) -> None:
    """Make the dynamic policy stop instances at 14/28/56/112 in the proportions ``mix``
    (a random, seeded assignment), through the head's ``choice_hook``. The switch still runs and
    is paid for; only its choice is replaced, so the stages computed are those a trained switch
    with this histogram would run."""
    head = model.mask_branch

    def mixed(chosen, switch_input, counts):
        if head.policy != "dynamic":
            return chosen
        n = chosen.shape[0]
        edges = torch.tensor(mix, dtype=torch.float64).cumsum(0) / sum(mix)
        ranks = (torch.arange(n, dtype=torch.float64) + 0.5) / max(n, 1)
        stage = torch.bucketize(ranks, edges).clamp(max=3)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return stage[perm].to(chosen.device)

    head.choice_hook = mixed


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def inference(args, device) -> dict:
    size = (800, 1216) if device.type == "cuda" else (512, 512)
    size = tuple(args.size) if args.size else size
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, *size, generator=g).to(device) for _ in range(args.batch)]
    rows = {}
    detections = getattr(args, "detections", 100)
    tv, ours = build_pair(size, "dynamic", args.mix, device, args.fam, detections)
    variants = [("dynamic", 1.0), ("fixed-28", 1.0), ("fixed-112", 1.0)]
    with torch.no_grad():
        ref = tv(images)
        if any(len(r["boxes"]) != detections for r in ref):
            print(f"warning: not every image has {detections} detections:", [len(r["boxes"]) for r in ref])
        out = ours(images)
        same_boxes = all(
            torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"]) for a, b in zip(ref, out)
        )
        for _ in range(args.warmup):
            tv(images)
            for policy, budget in variants:
                ours.policy, ours.mask_budget = policy, budget
                ours(images)
        samples = {"torchvision": []} | {p: [] for p, _ in variants}
        for _ in range(args.runs):
            samples["torchvision"].append(timed(lambda: tv(images), device))
            for policy, budget in variants:
                ours.policy, ours.mask_budget = policy, budget
                samples[policy].append(timed(lambda: ours(images), device))
        ours.policy = "dynamic"
        res = torch.cat([o["mask_resolution"] for o in ours(images)])
        hist = {str(r): int((res == r).sum()) for r in (14, 28, 56, 112)}
        mask_gflops = float(torch.cat([o["mask_flops"] for o in ours(images)]).mean()) / 1e9
        breakdown = {"torchvision": _median_parts(tv, images, device, args.parts_runs)}
        for policy, budget in variants:
            ours.policy, ours.mask_budget = policy, budget
            breakdown[policy] = _median_parts(ours, images, device, args.parts_runs)
    for name, s in samples.items():
        rows[name] = {"median_s": statistics.median(s), "runs": len(s)}
    return {
        "image_size": list(size),
        "batch": args.batch,
        "detections_per_image": [len(r["boxes"]) for r in ref],
        "same_detections": same_boxes,
        "fam": args.fam,
        "dynamic_mix": list(args.mix),
        "mix_source": args.mix_source,
        "dynamic_histogram": hist,
        "dynamic_mask_gflops_per_instance": mask_gflops,
        "end_to_end": rows,
        "parts": breakdown,
    }


def _median_parts(model, images, device, runs: int) -> dict:
    parts = [staged(model, images, device) for _ in range(runs)]
    return {k: statistics.median(p[k] for p in parts) for k in parts[0]}


def training_child(
    which: str, device_name: str, size: int, batch: int, steps: int, amp: str = "none", narrow: bool = False
) -> None:
    """One process per model so that peak memory is its own. ``amp="bf16"`` runs the forward
    pass under bfloat16 autocast. ``narrow`` builds both models 4x narrower with fewer sampled
    RoIs (the plumbing check on CPU, where bf16 convolutions are emulated and slow)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection import maskrcnn_resnet50_fpn as tv50
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from dynamask.data.shapes import make_shapes_tensors
    from dynamask.models import dynamask_resnet18_fpn, dynamask_resnet50_fpn

    device = torch.device(device_name)
    torch.manual_seed(0)
    r50 = device.type == "cuda"
    settings = dict(min_size=size if not r50 else 800, max_size=size if not r50 else 1333)
    if narrow:
        settings.update(box_batch_size_per_image=64, rpn_post_nms_top_n_train=100)
    if which == "torchvision" and narrow:
        model = _narrow_torchvision_maskrcnn(settings, r50)
    elif which == "torchvision":
        model = (
            tv50(weights=None, weights_backbone=None, num_classes=9, **settings)
            if r50
            else MaskRCNN(
                resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5),
                num_classes=9,
                **settings,
            )
        )
    else:
        extra = dict(fpn_channels=64, box_representation_size=256, widths=(64, 32, 32, 16)) if narrow else {}
        if which == "dynamask-points":  # point-sparse 56/112 stages (model.refinement=points)
            extra.update(refinement="points")  # the defaults: 784 points trained, 1568 refined
        elif which.startswith("dynamask"):
            extra.update(refinement="dense")
        model = (dynamask_resnet50_fpn if r50 else dynamask_resnet18_fpn)(9, policy="dynamic", **settings, **extra)
    model.to(device).train()
    hw = (800, 1216) if r50 else (size, size)
    images, targets = make_shapes_tensors(batch, hw, seed=0)
    images = [img.to(device) for img in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    base = _rss_mib() if device.type != "cuda" else 0.0
    step()  # warm-up
    times = [timed(step, device) for _ in range(steps)]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        # growth of the process's peak resident memory over what it held before training
        # (the libraries alone hold ~2 GB in a CUDA build of torch)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(
        json.dumps(
            {
                "images_per_s": batch / statistics.median(times),
                "peak_mib": peak,
                "backbone": "resnet50" if r50 else "resnet18",
                "image_size": list(hw),
                "batch": batch,
                "amp": amp,
            }
        )
    )


def _narrow_torchvision_maskrcnn(settings: dict, r50: bool):
    """torchvision's MaskRCNN on a 64-channel FPN with a 256-wide box head and a 64-wide mask head
    (the narrow counterpart of the DynaMask model ``training_child`` builds with ``narrow``)."""
    from torchvision.models import resnet18, resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    body = (resnet50 if r50 else resnet18)(weights=None)
    stage = 256 if r50 else 64
    backbone = BackboneWithFPN(
        body,
        {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        [stage * 2**i for i in range(4)],
        64,
        extra_blocks=LastLevelMaxPool(),
    )
    return MaskRCNN(
        backbone,
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, 9),
        mask_head=MaskRCNNHeads(64, [64] * 4, 1),
        mask_predictor=MaskRCNNPredictor(64, 64, 9),
        **settings,
    )


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training(args, device) -> dict:
    """Images/s and peak memory of both models, each run ``args.train_runs`` times in a process of
    its own, the two interleaved; medians over the runs (every run is kept under ``runs``)."""
    runs = {"torchvision": [], "dynamask": [], "dynamask-points": []}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
    }
    for _ in range(args.train_runs):
        for which in runs:
            cmd = [
                sys.executable,
                __file__,
                "--train-child",
                which,
                "--device",
                str(device),
                "--train-size",
                str(args.train_size),
                "--train-batch",
                str(args.train_batch),
                "--train-steps",
                str(args.train_steps),
                "--train-amp",
                args.train_amp,
            ]
            if getattr(args, "train_narrow", False):
                cmd.append("--train-narrow")
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"training benchmark of {which} failed:\n{proc.stderr[-2000:]}")
            runs[which].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = {}
    for which, rs in runs.items():
        out[which] = dict(
            rs[0],
            images_per_s=statistics.median(r["images_per_s"] for r in rs),
            peak_mib=statistics.median(r["peak_mib"] for r in rs),
            runs=rs,
        )
    return out


def default_mix() -> tuple[tuple[float, ...], str]:
    """The stage mix the dynamic row forces: the 256-px benchmark's default calibrated head at 100
    detections per image (``switch_quality_256.json``), else the 128-px benchmark's dynamic@0.4."""
    path = ROOT / "benchmarks" / "results" / "switch_quality_256.json"
    try:
        result = json.loads(path.read_text())
        hist = result["speed_mix_at_100_detections"]["histogram"]
        mix = tuple(float(hist[str(r)]) for r in (14, 28, 56, 112))
        if sum(mix) > 0:
            return mix, f"{path.relative_to(ROOT)} ({result['default_head']} calibrated, 100 detections per image)"
    except (OSError, KeyError, ValueError, TypeError):
        pass
    path = ROOT / "benchmarks" / "results" / "accuracy_vs_cost.json"
    try:
        hist = json.loads(path.read_text())["models"]["dynamic@0.4"]["resolution_histogram"]
        mix = tuple(float(hist[str(r)]) for r in (14, 28, 56, 112))
        if sum(mix) > 0:
            return mix, f"{path.relative_to(ROOT)} (dynamic@0.4 histogram)"
    except (OSError, KeyError, ValueError, TypeError):
        pass
    return (40.0, 30.0, 20.0, 10.0), "default 40/30/20/10"


def report(result: dict) -> str:
    inf = result["inference"]
    tv = inf["end_to_end"]["torchvision"]["median_s"]
    lines = [
        f"inference, {inf['batch']} image(s) of {inf['image_size'][0]}x{inf['image_size'][1]}, FAM {inf['fam']}, "
        f"{inf['detections_per_image'][0]} detections each, same detections: {inf['same_detections']}",
        f"{'model':22s} {'median s':>9s} {'ratio':>6s}   "
        + "  ".join(f"{p:>12s}" for p in inf["parts"]["torchvision"]),
    ]
    for name, row in inf["end_to_end"].items():
        label = "torchvision Mask R-CNN" if name == "torchvision" else f"dynamask {name}"
        parts = inf["parts"][name]
        lines.append(
            f"{label:22s} {row['median_s']:9.3f} {row['median_s'] / tv:6.2f}   "
            + "  ".join(f"{parts[k]:12.4f}" for k in parts)
        )
    h = inf["dynamic_histogram"]
    lines.append(
        f"dynamic resolutions 14/28/56/112: {h['14']}/{h['28']}/{h['56']}/{h['112']} (mix from "
        f"{inf['mix_source']}), "
        f"{inf['dynamic_mask_gflops_per_instance']:.3f} mask GFLOPs per instance"
    )
    if "training" in result:
        t = result["training"]
        a, b = t["torchvision"], t["dynamask"]
        lines.append(
            f"training ({a['backbone']}, {a['batch']} x {a['image_size'][0]}x{a['image_size'][1]}): "
            f"torchvision {a['images_per_s']:.2f} img/s, {a['peak_mib']:.0f} MiB peak; dynamask "
            f"{b['images_per_s']:.2f} img/s ({b['images_per_s'] / a['images_per_s']:.2f}x), "
            f"{b['peak_mib']:.0f} MiB peak ({b['peak_mib'] / a['peak_mib']:.2f}x)"
        )
        if "dynamask-points" in t:
            c = t["dynamask-points"]
            lines.append(
                f"  dynamask with point stages: {c['images_per_s']:.2f} img/s "
                f"({c['images_per_s'] / a['images_per_s']:.2f}x torchvision), {c['peak_mib']:.0f} MiB peak "
                f"({c['peak_mib'] / a['peak_mib']:.2f}x)"
            )
    lines.append(f"speed ratio (dynamask / torchvision): {inf['end_to_end']['dynamic']['median_s'] / tv:.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, nargs=2, default=None, help="H W (default 512 512 on CPU, 800 1216 on CUDA)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=20, help="timed forward passes per model (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--parts-runs", type=int, default=5)
    p.add_argument(
        "--mix",
        type=float,
        nargs=4,
        default=None,
        metavar=("P14", "P28", "P56", "P112"),
        help="share of instances stopping at 14/28/56/112 in the dynamic row (default: the "
        "dynamic@0.4 histogram of benchmarks/results/accuracy_vs_cost.json, else 40 30 20 10)",
    )
    p.add_argument(
        "--fam",
        choices=("deform", "conv"),
        default="deform",
        help="DynaMask's feature aggregation: the paper's deformable conv or a plain conv",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-training", action="store_true")
    p.add_argument("--train-size", type=int, default=256, help="CPU training image side (R18)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--train-runs", type=int, default=3, help="processes per model (medians reported)")
    p.add_argument("--train-amp", choices=("none", "bf16"), default="none", help="bfloat16 autocast in training")
    p.add_argument(
        "--train-narrow",
        action="store_true",
        help="4x narrower models with fewer sampled RoIs (plumbing checks; ratios not comparable)",
    )
    p.add_argument("--train-child", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--out", type=Path, default=None, help="results JSON (default benchmarks/results/speed_<device>.json)"
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_child:
        training_child(
            args.train_child,
            args.device,
            args.train_size,
            args.train_batch,
            args.train_steps,
            args.train_amp,
            args.train_narrow,
        )
        return
    if args.mix is None:
        args.mix, args.mix_source = default_mix()
    else:
        args.mix_source = "--mix"
    device = torch.device(args.device)
    started = time.time()
    result = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "inference": inference(args, device),
    }
    if not args.no_training:
        result["training"] = training(args, device)
    result["wall_time_s"] = round(time.time() - started, 1)
    out = args.out or ROOT / "benchmarks" / "results" / f"speed_{device.type}_{args.fam}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {out} in {result['wall_time_s']:.0f} s")
    print(report(result))


if __name__ == "__main__":
    main()
