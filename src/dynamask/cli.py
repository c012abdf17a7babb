"""Command line interface: ``dynamask <command>`` (also ``python -m dynamask``).

Commands: ``shapes`` (synthetic dataset), ``train``, ``evaluate``, ``predict``, ``export``, ``demo``,
``app`` (the browser viewer), ``config`` (the resolved configuration with each key's doc).
``dynamask <command> --help`` lists each command's options.

Errors in the user's input (config, paths, data) are reported as one line
``error: <message>`` on stderr with exit status 2; ``--debug`` (before or after
the command) shows the full traceback instead. An interrupted run exits with
status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence

from . import __version__
from .errors import DynaMaskError

__all__ = ["main", "build_parser", "setup_logging"]

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DynaMaskHandler(logging.StreamHandler):
    """Marker class so that repeated setup_logging() calls do not add handlers."""


def setup_logging(level: int = logging.INFO) -> None:
    """Send ``dynamask.*`` log records to stderr (concise format).

    Under torchrun only rank 0 logs at ``level``; the other processes log warnings and errors.
    """
    rank = os.environ.get("RANK", "0").strip() or "0"
    log = logging.getLogger("dynamask")
    for h in list(log.handlers):
        if isinstance(h, _DynaMaskHandler):
            log.removeHandler(h)
    handler = _DynaMaskHandler(sys.stderr)
    fmt = _LOG_FORMAT if rank == "0" else f"[rank {rank}] {_LOG_FORMAT}"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level if rank == "0" else max(level, logging.WARNING))
    log.propagate = False


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def _budget(text: str) -> float:
    v = _unit_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
    )

    parser = argparse.ArgumentParser(
        prog="dynamask",
        description="Instance segmentation with dynamic mask resolution (DynaMask) on torchvision.",
        epilog="Run 'dynamask <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dynamask {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True

    _add_shapes(sub, common)
    _add_train(sub, common)
    _add_evaluate(sub, common)
    _add_calibrate(sub, common)
    _add_predict(sub, common)
    _add_export(sub, common)
    _add_demo(sub, common)
    _add_app(sub, common)
    _add_config(sub, common)
    return parser


def _add_shapes(sub, common) -> None:
    p = sub.add_parser(
        "shapes",
        parents=[common],
        help="generate the synthetic shapes dataset (COCO format)",
        description="Write a synthetic COCO-format shapes dataset: OUT/{train,val}/*.png and "
        "OUT/{train,val}.json, then print the yardstick of the validation split: "
        "the mean round-trip mask IoU and boundary IoU of its ground truth cropped "
        "to the box at 14/28/56/112 and pasted back (the ceiling of a mask head "
        "at that resolution).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--train", type=_non_negative_int, default=200, metavar="N", help="training images (default 200)")
    p.add_argument("--val", type=_non_negative_int, default=50, metavar="M", help="validation images (default 50)")
    p.add_argument("--size", type=_positive_int, default=128, metavar="S", help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument(
        "--detail",
        action="store_true",
        help="add the six detail families (categories 9-14: thin legs, spokes, teeth, twigs, holes, "
        "strokes a few pixels wide) that a 28x28 mask cannot represent; try --size 256",
    )
    p.set_defaults(func=cmd_shapes)


def _add_train(sub, common) -> None:
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


def _add_evaluate(sub, common) -> None:
    from .config import POLICIES

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
    p.add_argument("--budget", type=_budget, metavar="F", help="test-time mask budget in (0, 1]")
    p.add_argument("--max-images", type=_positive_int, metavar="N", help="evaluate on the first N images only")
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_evaluate)


def _add_calibrate(sub, common) -> None:
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
        type=_budget,
        metavar="F",
        help="mean mask cost per detection, fraction of the full path (default: the training target)",
    )
    p.add_argument("--max-images", type=_positive_int, metavar="N", help="use the first N images only")
    p.add_argument(
        "--refinement-points",
        type=_positive_int,
        metavar="N",
        help="point-refinement heads: calibrate for N points per stage and write N into the checkpoint's "
        "config (the stage costs, and so the price, depend on it)",
    )
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_calibrate)


def _add_predict(sub, common) -> None:
    from .config import POLICIES

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
        "--score-thresh", type=_unit_float, default=0.5, metavar="T", help="minimum detection score (default 0.5)"
    )
    p.add_argument("--policy", choices=POLICIES, help="mask-resolution policy")
    p.add_argument("--budget", type=_budget, metavar="F", help="test-time mask budget in (0, 1]")
    p.add_argument("--device", metavar="D", help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)


def _add_export(sub, common) -> None:
    from .config import POLICIES

    p = sub.add_parser(
        "export",
        parents=[common],
        help="export a checkpoint to ONNX or TorchScript",
        description="Write a checkpoint as one ONNX or TorchScript file: input 'image' (float32 "
        "3xHxW in [0, 1]), outputs boxes, labels, scores, masks (Nx1xHxW), "
        "mask_resolution; class names in the file's metadata. Then run the file against "
        "PyTorch on validation images (data.val_json of the checkpoint's config, else "
        "synthetic shapes) and report the comparison.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="checkpoint (model_final.pt)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"), help="file format")
    p.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx / .pt)")
    p.add_argument("--policy", choices=POLICIES, help="mask-resolution policy held by the file (default: the model's)")
    p.add_argument("--budget", type=_budget, metavar="F", help="test-time mask budget (only 1.0 can be exported)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the checkpoint's config)")
    p.add_argument(
        "--verify-images",
        type=int,
        default=8,
        metavar="N",
        help="validation images to compare file and PyTorch on (0: skip; default 8)",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_export)


def _add_demo(sub, common) -> None:
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
        type=_positive_int,
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


def _add_app(sub, common) -> None:
    p = sub.add_parser(
        "app",
        parents=[common],
        help="browser viewer: the mask budget as a slider (the [app] extra)",
        description="Serve a page (Gradio) that runs a model on a sample or uploaded image: overlay "
        "coloured by the chosen mask resolution beside the same head at fixed-112, "
        "budget slider and policy, per-instance table, mask GFLOPs, latency, downloads. "
        "Nothing is fetched from outside.",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint (.pt) or exported model (.onnx, .ts) (default: the shipped DynaMask head)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_positive_int, default=7860, help="port (default 7860)")
    p.set_defaults(func=cmd_app)


def _add_config(sub, common) -> None:
    p = sub.add_parser(
        "config",
        parents=[common],
        help="print the resolved config, every key documented",
        description="Print the config that train would use (defaults <- --config FILE <- KEY=VALUE "
        "overrides) as YAML, each key followed by its one-line description. A bad key or "
        "value is a one-line error.",
    )
    p.add_argument("--config", metavar="FILE", help="YAML config file (default: the defaults)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=cmd_config)


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def cmd_shapes(args: argparse.Namespace) -> int:
    from .data import generate_shapes_dataset

    summary = generate_shapes_dataset(
        args.out, args.train, args.val, image_size=args.size, seed=args.seed, detail=args.detail
    )
    n_img, n_ann = summary.get("num_images", {}), summary.get("num_annotations", {})
    print(f"wrote the shapes dataset to {os.path.abspath(args.out)}")
    for split in ("train", "val"):
        print(
            f"  {split}: {n_img.get(split, 0)} images, {n_ann.get(split, 0)} instances -> "
            f"{summary.get(split + '_json')} (images in {summary.get(split + '_dir')})"
        )
    names = [c["name"] for c in summary.get("categories", [])]
    if names:
        print(f"  {len(names)} categories: {', '.join(names)}")
    if n_ann.get("val", 0):
        from .evaluation.yardstick import yardstick_from_coco

        ys = yardstick_from_coco(summary["val_json"])
        print(f"yardstick (val, {ys.geometry} geometry, {ys.num_instances} instances): {ys.format()}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)  # config errors before the (slow) torch import
    from .engine.train import train

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
            _print_metrics(summary["eval"])
    return EXIT_OK


def _checkpoint_config(path: str) -> dict | None:
    """The config stored in a checkpoint (memory-mapped read; no weights are copied)."""
    import torch

    from .inference import load_checkpoint

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = load_checkpoint(path)  # gives the proper error message
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return cfg if isinstance(cfg, dict) else None


def _config_for_checkpoint(config: str | None, overrides: Sequence[str], weights: str) -> dict | None:
    """Config from --config (+ overrides), else the checkpoint's (+ overrides), else None."""
    from .config import load_config, save_config

    if config is not None:
        return load_config(config, overrides)
    if not overrides:
        return None
    if not os.path.isfile(weights):
        raise DynaMaskError(f"{weights}: checkpoint file not found")
    base = _checkpoint_config(weights)
    if base is None:
        from .models.torchvision_weights import read_torchvision_detection_file

        if read_torchvision_detection_file(weights) is not None:  # torchvision's weights: defaults + overrides
            return load_config(None, overrides)
        raise DynaMaskError(f"{weights}: the checkpoint carries no config; pass --config")
    with tempfile.TemporaryDirectory(prefix="dynamask-cfg-") as tmp:
        path = os.path.join(tmp, "checkpoint_config.yaml")
        save_config(base, path)
        return load_config(path, overrides)


def _print_metrics(metrics: dict) -> None:
    try:
        from .evaluation.report import format_metrics_table  # not through engine: no torch for --results
    except ImportError:
        format_metrics_table = None
    if format_metrics_table is not None:
        print(format_metrics_table(metrics))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            v = f"{v:.3f}"
        print(f"{k:<28} {v}")


@contextlib.contextmanager
def _process_group(device: str | None, cfg: dict | None):
    """Under torchrun (WORLD_SIZE > 1): this process's device (``cuda:LOCAL_RANK`` with CUDA) and
    the process group, destroyed at the end; otherwise ``device`` as given and nothing else.
    Collectives time out after ``solver.dist_timeout_s`` (rank 0 computes the metrics while the
    others wait)."""
    from .engine import distributed as du

    if not du.launched_distributed():
        yield device
        return
    from datetime import timedelta

    from .config import default_config

    dev = du.resolve_training_device(device, True)
    seconds = ((cfg or {}).get("solver") or {}).get("dist_timeout_s") or default_config()["solver"]["dist_timeout_s"]
    timeout = timedelta(seconds=float(seconds))
    created = du.init_distributed(device=str(dev), timeout=timeout)
    try:
        yield str(dev)
    finally:
        if created:
            du.cleanup_distributed()


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0").strip() in ("", "0")


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
    from .engine.evaluate import evaluate

    cfg = _config_for_checkpoint(args.config, args.overrides, args.weights)
    with _process_group(args.device, cfg) as device:
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
    if _is_rank0():
        _print_metrics(metrics)
        if args.out:
            print(f"metrics written to {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return EXIT_OK


def _evaluate_results_file(args: argparse.Namespace) -> int:
    """``evaluate --results FILE.json``: no model; rank 0 alone under torchrun."""
    from .config import load_config

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
    if not _is_rank0():
        return EXIT_OK  # nothing to share out: rank 0 scores the file
    from .evaluation.score_file import evaluate_results

    metrics = evaluate_results(
        args.results, gt, out_dir=args.out, max_dets=int(cfg["test"]["max_dets"]), progress=not args.no_progress
    )
    _print_metrics(metrics)
    if args.out:
        print(f"metrics written to {os.path.join(os.path.abspath(args.out), 'metrics.json')}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    import json

    import torch

    from .data import CocoInstanceDataset
    from .engine.build import save_checkpoint
    from .engine.calibrate import CALIBRATION_KEYS, calibrate_switch
    from .inference import MASK_BRANCH_PREFIX, model_from_checkpoint, resolve_device

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


def cmd_export(args: argparse.Namespace) -> int:
    from .export import ExportedRunner, export_model, prepare_for_export, verify_export
    from .inference import model_from_checkpoint

    cfg = _config_for_checkpoint(args.config, args.overrides, args.weights)
    model, ckpt = model_from_checkpoint(args.weights, cfg)
    try:
        prepare_for_export(model, args.policy, args.budget)
    except ValueError as exc:
        raise DynaMaskError(f"export: policy {args.policy!r} cannot be used with this model: {exc}") from None
    example = _export_example(model)
    export_model(model, args.format, args.out, ckpt.get("class_names") or [], ckpt.get("cat_ids"), example=example)
    print(f"wrote {args.out} ({args.format}, policy {model.policy}, {os.path.getsize(args.out) / 2**20:.1f} MiB)")
    if args.verify_images > 0:
        images, source = _verification_images(cfg or ckpt.get("config") or {}, args.verify_images, model)
        report = verify_export(model, ExportedRunner(args.out), images)
        worst_box = max(r["max_box_diff"] for r in report["images"])
        worst_iou = min(r["min_mask_iou"] for r in report["images"])
        print(
            f"verified on {len(images)} {source} image(s), detections per image {report['detection_counts']}: "
            f"max box difference {worst_box:.2e} px, min mask IoU {worst_iou:.4f} -> "
            f"{'OK' if report['ok'] else 'MISMATCH'}"
        )
        if not report["ok"]:
            raise DynaMaskError(
                f"export: {args.out} does not reproduce the PyTorch model "
                f"(see the comparison above); please report this"
            )
    return EXIT_OK


def _export_example(model):
    """The image the graph is traced on: synthetic, so never one of the verification images."""
    from .data import make_shapes_tensors

    size = model.transform.min_size[-1]
    return make_shapes_tensors(1, (size, size), seed=987654)[0][0]


def _verification_images(cfg: dict, n: int, model):
    data = cfg.get("data") or {}
    if data.get("val_json") and data.get("val_images") and os.path.isfile(data["val_json"]):
        from .data import CocoInstanceDataset

        ds = CocoInstanceDataset(data["val_json"], data["val_images"], transforms=None, validate_masks=False)
        import torch

        return [ds[i][0].as_subclass(torch.Tensor) for i in range(min(n, len(ds)))], "validation"
    from .data import make_shapes_tensors

    size = model.transform.min_size[-1]
    return make_shapes_tensors(n, (size, size), seed=123)[0], "synthetic shapes"


def cmd_predict(args: argparse.Namespace) -> int:
    from .engine.predict import predict_files

    with _process_group(args.device, None) as device:
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
    if _is_rank0():
        print(f"predictions written to {result}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .engine.demo import run_demo

    report = run_demo(
        args.out,
        args.quick,
        progress=not getattr(args, "no_progress", False),
        checkpoints=args.checkpoints,
        val_images=args.val_images,
    )
    print(f"report written to {report}")
    return EXIT_OK


def cmd_app(args: argparse.Namespace) -> int:
    from .app import serve

    serve(args.weights, args.host, args.port)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from .config import config_to_documented_yaml, load_config

    print(config_to_documented_yaml(load_config(args.config, args.overrides)), end="")
    return EXIT_OK


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


#: errors in the user's input, reported as one line (DatasetError and ConfigError derive from
#: DynaMaskError; DatasetError also from ValueError)
USER_ERRORS = (DynaMaskError, FileNotFoundError, PermissionError, OSError, ValueError)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    if isinstance(exc, OSError) and not isinstance(exc, DynaMaskError) and exc.filename and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    if not msg:
        msg = type(exc).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _rank_prefix() -> str:
    world = os.environ.get("WORLD_SIZE", "1").strip()
    if world not in ("", "1"):
        return f"[rank {os.environ.get('RANK', '?')}] "
    return ""


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, also accepting KEY=VALUE overrides after options (``train --out D a=1 --resume b=2``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = _parse(parser, argv)
    debug = bool(getattr(args, "debug", False))
    setup_logging(logging.DEBUG if debug else logging.INFO)
    if debug:
        return int(args.func(args) or 0)

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        train_mod = sys.modules.get("dynamask.engine.train")  # only a training run can have been interrupted
        if train_mod is not None and isinstance(exc, train_mod.TrainingInterrupted):
            print(f"{_rank_prefix()}{_one_line(exc)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{_rank_prefix()}error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # last resort: never a bare traceback without --debug
        print(
            f"{_rank_prefix()}error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            f"(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
