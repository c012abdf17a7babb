"""``dynamask train``: train a model from a config (single process or under torchrun)."""

from __future__ import annotations

import argparse
import os

from .evaluate import print_metrics
from .exit_status import EXIT_OK


def add_train(sub, common) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a model",
        description="Train a model. Config values can be overridden with KEY=VALUE arguments, "
        "e.g. solver.max_iter=200 model.backbone=resnet18. Under "
        "'torchrun --nproc_per_node=N -m dynamask train ...' training is distributed "
        "(solver.ims_per_batch is the global batch).",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file")
    p.add_argument("--out", metavar="DIR", help="output folder (default: the config's output_dir)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt")
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config

    cfg = load_config(args.config, args.overrides)  # config errors before the (slow) torch import
    from ..engine.train import train

    summary = train(cfg, out_dir=args.out, resume=args.resume, progress=not args.no_progress, device=args.device)
    if os.environ.get("RANK", "0") in ("", "0"):
        loss = summary.get("total_loss")
        loss_txt = f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
        print(f"trained to iteration {summary['iteration']}{loss_txt}")
        print(f"model: {summary['model_final']}")
        print(
            f"logs:  {os.path.join(summary['output_dir'], 'metrics.jsonl')} "
            f"(tensorboard --logdir {os.path.join(summary['output_dir'], 'tb')})"
        )
        if summary.get("eval"):
            print_metrics(summary["eval"])
    return EXIT_OK
