"""``dynamask demo``: the shipped models on the detailed shapes, with report and plots (no training)."""

from __future__ import annotations

import argparse

from .arguments import positive_int
from .exit_status import EXIT_OK


def add_demo(sub, common) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the shipped models on detailed shapes, report and plots",
        description="Evaluate the shipped detector with its DynaMask and Mask R-CNN heads on the "
        "detailed shapes validation images (no training): table, verdicts, AP-vs-FLOPs "
        "plot with the budget dial, overlay gallery.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="output folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few images only (smoke test, noisy numbers)")
    p.add_argument(
        "--val-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="validation images to evaluate (default 200; --quick: 4)",
    )
    p.add_argument(
        "--checkpoints",
        default=None,
        metavar="DIR",
        help="folder with the shipped files (default: the repository's checkpoints/)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..engine.demo import run_demo

    report = run_demo(
        args.out,
        args.quick,
        progress=not getattr(args, "no_progress", False),
        checkpoints=args.checkpoints,
        val_images=args.val_images,
    )
    print(f"report written to {report}")
    return EXIT_OK
