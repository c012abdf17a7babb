"""``dynamask export``: write a checkpoint as an ONNX or TorchScript file, then check the file against
PyTorch on a few images."""

from __future__ import annotations

import argparse
import os

from ..errors import DynaMaskError
from .arguments import budget_fraction
from .checkpoint_config import config_for_checkpoint
from .exit_status import EXIT_OK


def add_export(sub, common) -> None:
    from ..config import POLICIES

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
    p.add_argument(
        "--budget", type=budget_fraction, metavar="F", help="test-time mask budget (only 1.0 can be exported)"
    )
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


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import ExportedRunner, export_model, prepare_for_export, verify_export
    from ..inference import model_from_checkpoint

    cfg = config_for_checkpoint(args.config, args.overrides, args.weights)
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
    from ..data import make_shapes_tensors

    size = model.transform.min_size[-1]
    return make_shapes_tensors(1, (size, size), seed=987654)[0][0]


def _verification_images(cfg: dict, n: int, model):
    data = cfg.get("data") or {}
    if data.get("val_json") and data.get("val_images") and os.path.isfile(data["val_json"]):
        from ..data import CocoInstanceDataset

        ds = CocoInstanceDataset(data["val_json"], data["val_images"], transforms=None, validate_masks=False)
        import torch

        return [ds[i][0].as_subclass(torch.Tensor) for i in range(min(n, len(ds)))], "validation"
    from ..data import make_shapes_tensors

    size = model.transform.min_size[-1]
    return make_shapes_tensors(n, (size, size), seed=123)[0], "synthetic shapes"
