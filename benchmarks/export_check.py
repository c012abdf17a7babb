"""What exports, measured: every format × policy × FAM is exported, run against PyTorch on images
it was not traced on, and timed against PyTorch on CPU in the same run.

Models: the shipped DynaMask checkpoint (plain-conv FAM, trained) and, for the deformable FAM, the
same architecture with the deformable FAM at random init (offsets pushed away from zero so that
the sampling is fractional); images: synthetic shapes at the model's 128×128 input plus two other
sizes, never the traced image. A row passes when every image has the same number of detections,
boxes within 1e-3 px and mask IoU ≥ 0.99 (at 0.5) — on the random model mask IoU is not
meaningful (its masks sit at 0.5), so the largest mask-probability difference is reported too.

    python benchmarks/export_check.py [--runs 10]

Writes benchmarks/results/export_check.json and prints the matrix last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from dynamask.data import make_shapes_tensors  # noqa: E402
from dynamask.export import ExportedRunner, export_model, prepare_for_export, verify_export  # noqa: E402
from dynamask.inference import model_from_checkpoint, with_defaults  # noqa: E402
from dynamask.models import build_model  # noqa: E402

CHECKPOINT = ROOT / "checkpoints" / "shapes_detail_dynamask_c64.pt"
POLICIES = ("fixed-14", "fixed-28", "fixed-56", "fixed-112", "size", "dynamic")


def load(fam: str):
    model, ckpt = model_from_checkpoint(str(CHECKPOINT))
    if fam == "deform":
        base = with_defaults(ckpt["config"])
        cfg = {
            **base,
            "model": {**base["model"], "fam": "deform", "weights_backbone": None, "mask_geometry": model.mask_geometry},
        }
        torch.manual_seed(0)
        random_model = build_model(cfg, ckpt["num_classes"])
        own = random_model.state_dict()
        # the trained detector and everything of the head that fits; the deformable FAM stays random
        random_model.load_state_dict(
            {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
        )
        with torch.no_grad():
            for fam_module in random_model.mask_branch.aggregators:
                fam_module.offset.bias.normal_(0, 0.8, generator=torch.Generator().manual_seed(1))
        model = random_model
    return model.eval(), ckpt


def median_time(fn, image, runs: int) -> float:
    fn(image)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(image)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10, help="timed runs per model and image (median)")
    p.add_argument("--formats", nargs="+", default=["onnx", "torchscript"])
    p.add_argument("--policies", nargs="+", default=list(POLICIES))
    p.add_argument("--fams", nargs="+", default=["conv", "deform"])
    p.add_argument("--out", type=Path, default=HERE / "results" / "export_check.json")
    args = p.parse_args(argv)
    # the shipped model's data (detailed shapes, 256 px) and two other sizes and aspect ratios
    images = (
        make_shapes_tensors(6, 256, seed=321, detail=True)[0]
        + make_shapes_tensors(1, (192, 320), seed=322, detail=True)[0]
        + make_shapes_tensors(1, (320, 224), seed=323, detail=True)[0]
    )
    example = make_shapes_tensors(1, 256, seed=987654, detail=True)[0][0]
    rows, started = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.fams:
            for policy in args.policies:
                model, ckpt = load(fam)
                prepare_for_export(model, policy)
                for fmt in args.formats:
                    path = str(Path(tmp) / f"m.{'onnx' if fmt == 'onnx' else 'pt'}")
                    row = {"format": fmt, "policy": policy, "fam": fam, "trained": fam == "conv"}
                    try:
                        export_model(model, fmt, path, ckpt["class_names"], ckpt.get("cat_ids"), example=example)
                    except Exception as exc:  # a row of the matrix, not a crash of the script
                        rows.append(row | {"exported": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
                        print(rows[-1], flush=True)
                        continue
                    runner = ExportedRunner(path)
                    report = verify_export(model, runner, images)
                    prob_diff = 0.0
                    for image in images:
                        with torch.no_grad():
                            ref = model([image])[0]
                        got = runner(image)
                        if ref["masks"].shape == got["masks"].shape:
                            prob_diff = max(prob_diff, float((ref["masks"] - got["masks"]).abs().max()))
                    with torch.no_grad():
                        t_torch = statistics.median(
                            median_time(lambda im: model([im]), im, args.runs)  # noqa: B023 - called within this iteration
                            for im in images[:3]
                        )
                    t_file = statistics.median(median_time(runner, im, args.runs) for im in images[:3])
                    row |= {
                        "exported": True,
                        "ok": report["ok"],
                        "detection_counts": report["detection_counts"],
                        "max_box_diff": max(r["max_box_diff"] for r in report["images"]),
                        "min_mask_iou": min(r["min_mask_iou"] for r in report["images"]),
                        "max_mask_prob_diff": prob_diff,
                        "pytorch_ms": 1e3 * t_torch,
                        "file_ms": 1e3 * t_file,
                        "speed_ratio": t_file / t_torch,
                    }
                    rows.append(row)
                    print({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": "python benchmarks/export_check.py " + " ".join(argv or sys.argv[1:]),
        "images": [list(im.shape[-2:]) for im in images],
        "wall_time_s": round(time.time() - started, 1),
        "rows": rows,
    }
    import onnxruntime

    result["onnxruntime"] = onnxruntime.__version__
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n# {result['machine']}, {result['threads']} threads, torch {result['torch']}, onnxruntime "
        f"{result['onnxruntime']}, {result['date']} -> {args.out}"
    )
    print(
        f"{'format':12s} {'policy':10s} {'FAM':7s} {'ok':>5s} {'dets':>10s} {'box diff':>9s} {'mask IoU':>9s} "
        f"{'prob diff':>9s} {'torch ms':>9s} {'file ms':>8s} {'ratio':>6s}"
    )
    for r in rows:
        if not r["exported"]:
            print(f"{r['format']:12s} {r['policy']:10s} {r['fam']:7s} {'FAIL':>5s} {r['error']}")
            continue
        dets = f"{min(r['detection_counts'])}-{max(r['detection_counts'])}"
        print(
            f"{r['format']:12s} {r['policy']:10s} {r['fam']:7s} {str(r['ok']):>5s} {dets:>10s} {r['max_box_diff']:9.1e} "
            f"{r['min_mask_iou']:9.4f} {r['max_mask_prob_diff']:9.1e} {r['pytorch_ms']:9.1f} {r['file_ms']:8.1f} "
            f"{r['speed_ratio']:6.2f}"
        )


if __name__ == "__main__":
    main()
