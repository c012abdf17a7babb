"""``dynamask calibrate``: fit a dynamic head's cost switch on held-out data and write a new checkpoint."""

from __future__ import annotations

import argparse
import os

from ..errors import DynaMaskError
from .arguments import budget_fraction, positive_int
from .exit_status import EXIT_OK


def add_calibrate(sub, common) -> None:
    p = sub.add_parser(
        "calibrate",
        parents=[common],
        help="calibrate a dynamic head's switch on held-out data",
        description="Fit the cost switch's score map (P(real object) by detector score) and its "
        "price of compute on held-out images, so that the mean mask cost over the "
        "detections the model returns meets the budget target; writes a new "
        "checkpoint. Use a split of its own (e.g. dynamask shapes --seed 1), never "
        "the validation images.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint of a dynamic DynaMask model")
    p.add_argument("--data-json", required=True, metavar="FILE", help="held-out COCO-format annotations")
    p.add_argument("--data-images", required=True, metavar="DIR", help="folder of the held-out images")
    p.add_argument("--out", required=True, metavar="CKPT", help="the calibrated checkpoint to write")
    p.add_argument(
        "--target",
        type=budget_fraction,
        metavar="F",
        help="mean mask cost per detection, fraction of the full path (default: the training target)",
    )
    p.add_argument("--max-images", type=positive_int, metavar="N", help="use the first N images only")
    p.add_argument(
        "--refinement-points",
        type=positive_int,
        metavar="N",
        help="point-refinement heads: calibrate for N points per stage and write N into the checkpoint's "
        "config (the stage costs, and so the price, depend on it)",
    )
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..data import CocoInstanceDataset
    from ..engine.build import save_checkpoint
    from ..engine.calibrate import CALIBRATION_KEYS, calibrate_switch
    from ..inference import MASK_BRANCH_PREFIX, model_from_checkpoint, resolve_device

    if os.path.abspath(args.out) == os.path.abspath(args.weights):
        raise DynaMaskError("--out: write the calibrated checkpoint to a new file, not over --weights")
    model, _ = model_from_checkpoint(args.weights)
    if args.refinement_points is not None:
        if getattr(model.mask_branch, "refinement", None) != "points":
            raise DynaMaskError(
                f"--refinement-points: {args.weights} holds no point-refinement head (model.refinement points)"
            )
        model.mask_branch.refinement_points = args.refinement_points
    dataset = CocoInstanceDataset(
        args.data_json, args.data_images, transforms=None, keep_empty=True, validate_masks=False
    )
    report = calibrate_switch(
        model,
        dataset,
        target=args.target,
        device=resolve_device(args.device),
        max_images=args.max_images,
        progress=not args.no_progress,
    )
    raw = torch.load(args.weights, map_location="cpu", weights_only=True)  # as stored (a head file stays one)
    state = model.state_dict()
    for key in CALIBRATION_KEYS:
        raw["model"][MASK_BRANCH_PREFIX + key] = state[MASK_BRANCH_PREFIX + key].cpu()
    if raw.get("detector"):  # a head file names its detector relative to itself
        detector = os.path.join(os.path.dirname(os.path.abspath(args.weights)), raw["detector"])
        raw["detector"] = os.path.relpath(detector, os.path.dirname(os.path.abspath(args.out)))
    raw["calibration"] = {**report, "data_json": os.path.abspath(args.data_json)}
    if args.refinement_points is not None and isinstance((raw.get("config") or {}).get("model"), dict):
        raw["config"]["model"]["refinement_points"] = args.refinement_points  # runs as calibrated
    save_checkpoint(args.out, raw)
    print(json.dumps(report, indent=1))
    print(f"calibrated checkpoint written to {os.path.abspath(args.out)}")
    return EXIT_OK
