"""``dynamask predict``: segment image files, writing an overlay per image and predictions.json."""

from __future__ import annotations

import argparse

from .arguments import budget_fraction, unit_float
from .exit_status import EXIT_OK
from .torchrun import is_rank0, process_group


def add_predict(sub, common) -> None:
    from ..config import POLICIES

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="segment image files and write overlays",
        description="Run a checkpoint on images (files or folders): OUT/<name>_overlay.png per "
        "image and OUT/predictions.json. Under 'torchrun --nproc_per_node=N -m "
        "dynamask predict ...' the files are shared out among the processes; rank 0 "
        "writes predictions.json.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint (model_final.pt)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the checkpoint's config)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--score-thresh", type=unit_float, default=0.5, metavar="T", help="minimum detection score (default 0.5)"
    )
    p.add_argument("--policy", choices=POLICIES, help="mask-resolution policy")
    p.add_argument("--budget", type=budget_fraction, metavar="F", help="test-time mask budget in (0, 1]")
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine.predict import predict_files

    with process_group(args.device, None) as device:
        result = predict_files(
            args.weights,
            args.inputs,
            args.out,
            config=args.config,
            score_thresh=args.score_thresh,
            device=device,
            progress=not args.no_progress,
            policy=args.policy,
            mask_budget=args.budget,
        )
    if is_rank0():
        print(f"predictions written to {result}")
    return EXIT_OK
