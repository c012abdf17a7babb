"""``dynamask evaluate``: the metrics of a checkpoint on the validation set, or (``--results``) of a COCO
results file against its ground truth, with no model."""

from __future__ import annotations

import argparse
import os

from ..errors import DynaMaskError
from .arguments import budget_fraction, positive_int
from .checkpoint_config import config_for_checkpoint
from .exit_status import EXIT_OK
from .torchrun import is_rank0, process_group


def add_evaluate(sub, common) -> None:
    from ..config import POLICIES

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="evaluate a checkpoint on the validation set",
        description="COCO box/mask/boundary AP, mask FLOPs and resolution statistics of a "
        "checkpoint on data.val_json. The config defaults to the one stored in the "
        "checkpoint; KEY=VALUE arguments override it. Under 'torchrun "
        "--nproc_per_node=N -m dynamask evaluate ...' the images are shared out "
        "among the processes and rank 0 computes and writes the metrics. With "
        "--results FILE.json instead of --weights: the metrics of a COCO results "
        "file against the ground truth (--gt, else data.val_json), no model.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the checkpoint's config)")
    p.add_argument("--weights", metavar="CKPT", help="checkpoint (model_final.pt)")
    p.add_argument(
        "--results",
        metavar="FILE.json",
        help="score this COCO results file (a list of detections) instead of running a model",
    )
    p.add_argument(
        "--gt",
        metavar="FILE.json",
        help="with --results: the ground-truth COCO file (default: data.val_json of --config / "
        "the KEY=VALUE overrides)",
    )
    p.add_argument("--out", metavar="DIR", help="write metrics.json and coco_results.json here")
    p.add_argument("--policy", choices=POLICIES, help="mask-resolution policy for this evaluation")
    p.add_argument("--budget", type=budget_fraction, metavar="F", help="test-time mask budget in (0, 1]")
    p.add_argument("--max-images", type=positive_int, metavar="N", help="evaluate on the first N images only")
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.results is not None:
        return _evaluate_results_file(args)
    if args.weights is None:
        raise DynaMaskError(
            "evaluate: give --weights CKPT (a model to run on the validation set) or "
            "--results FILE.json (detections to score against the ground truth)"
        )
    if args.gt is not None:
        raise DynaMaskError(
            "evaluate: --gt goes with --results; a model is evaluated on data.val_json "
            "(pass data.val_json=FILE data.val_images=DIR)"
        )
    from ..engine.evaluate import evaluate

    cfg = config_for_checkpoint(args.config, args.overrides, args.weights)
    with process_group(args.device, cfg) as device:
        metrics = evaluate(
            cfg,
            weights=args.weights,
            out_dir=args.out,
            policy=args.policy,
            budget=args.budget,
            max_images=args.max_images,
            device=device,
            progress=not args.no_progress,
        )
    if is_rank0():
        print_metrics(metrics)
        if args.out:
            print(f"metrics written to {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return EXIT_OK


def _evaluate_results_file(args: argparse.Namespace) -> int:
    """``evaluate --results FILE.json``: no model; rank 0 alone under torchrun."""
    from ..config import load_config

    if args.weights is not None:
        raise DynaMaskError(
            "evaluate: give either --weights (run a model) or --results (score a results file), not both"
        )
    unused = [
        flag
        for flag, value in (
            ("--policy", args.policy),
            ("--budget", args.budget),
            ("--max-images", args.max_images),
            ("--device", args.device),
        )
        if value is not None
    ]
    if unused:
        raise DynaMaskError(f"evaluate --results: {', '.join(unused)} only apply when a model runs (--weights)")
    cfg = load_config(args.config, args.overrides)
    gt = args.gt or (cfg.get("data") or {}).get("val_json")
    if not gt:
        raise DynaMaskError(
            "evaluate --results: give the ground truth with --gt FILE.json "
            "(or data.val_json in --config / as data.val_json=FILE)"
        )
    if not is_rank0():
        return EXIT_OK  # nothing to share out: rank 0 scores the file
    from ..evaluation.score_file import evaluate_results

    metrics = evaluate_results(
        args.results, gt, out_dir=args.out, max_dets=int(cfg["test"]["max_dets"]), progress=not args.no_progress
    )
    print_metrics(metrics)
    if args.out:
        print(f"metrics written to {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return EXIT_OK


def print_metrics(metrics: dict) -> None:
    try:
        from ..evaluation.report import format_metrics_table  # not through engine: no torch for --results
    except ImportError:
        format_metrics_table = None
    if format_metrics_table is not None:
        print(format_metrics_table(metrics))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        print(f"{k:<28} {v}")
