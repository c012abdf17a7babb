"""Turn a training run into a small checkpoint to ship: weights in float16 (loaded back into
float32 parameters by load_state_dict), config, class names; no optimizer state.

    python tools/ship_checkpoint.py RUN_DIR OUT.pt                          # the whole model
    python tools/ship_checkpoint.py RUN_DIR DETECTOR.pt --detector-only     # all but the mask branch
    python tools/ship_checkpoint.py RUN_DIR HEAD.pt --detector DETECTOR.pt  # the mask branch alone

A head file names the shipped detector it was trained on (path relative to the head file, and its
sha256); loading the head loads that detector too (dynamask.inference.load_checkpoint). It is
refused when the run's detector weights are not the shipped detector's (in float16): heads trained
with ``model.freeze_detector`` on that detector pass. Also copies RUN_DIR's config.yaml,
metrics.jsonl and train.log next to OUT.pt (as OUT.config.yaml, ...), so the shipped file can be
traced to the run that made it. Absolute paths inside the repository are rewritten: relative to
the repository in the file's config and the logs, relative to OUT's folder in OUT.config.yaml (so
it loads from there).
"""

import argparse
import os
from pathlib import Path

import torch

from dynamask.engine.build import save_checkpoint
from dynamask.inference import MASK_BRANCH_PREFIX, file_sha256, load_checkpoint

KEEP = ("model", "config", "class_names", "cat_ids", "num_classes", "iteration", "hyper_parameters")
ROOT = Path(__file__).resolve().parents[1]


def repo_relative(value, start: Path | None = None):
    """Absolute paths inside this repository rewritten relative to it (or to ``start``), in
    strings, lists and dicts: shipped files must not name the machine they were made on."""
    if isinstance(value, dict):
        return {k: repo_relative(v, start) for k, v in value.items()}
    if isinstance(value, list):
        return [repo_relative(v, start) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and Path(value).resolve().is_relative_to(ROOT):
        return os.path.relpath(value, start or ROOT)
    return value


def copy_text(src: Path, dst: Path, prefix_to: str) -> None:
    """A log or config beside the shipped file, the repository's absolute prefix replaced."""
    text = src.read_text(encoding="utf-8")
    dst.write_text(text.replace(str(ROOT) + os.sep, prefix_to), encoding="utf-8")


def half(state: dict) -> dict:
    return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}


def ship(run: Path, out: Path, detector_only: bool = False, detector: Path | None = None) -> dict:
    ckpt = load_checkpoint(str(run / "model_final.pt"))
    state = half(ckpt["model"])
    record = {k: ckpt[k] for k in KEEP if k in ckpt}
    if "config" in record:
        record["config"] = repo_relative(record["config"])
    if detector_only:
        record["model"] = {k: v for k, v in state.items() if not k.startswith(MASK_BRANCH_PREFIX)}
        record["detector_only"] = True
    elif detector is not None:
        shipped = load_checkpoint(str(detector))["model"]
        for k, v in state.items():
            if not k.startswith(MASK_BRANCH_PREFIX) and (
                k not in shipped or not torch.equal(shipped[k].to(v.dtype), v)
            ):
                raise SystemExit(
                    f"{run}: its detector differs from {detector} at {k!r}; a head file can only "
                    f"reference the detector it was trained on (model.freeze_detector)"
                )
        record["model"] = {k: v for k, v in state.items() if k.startswith(MASK_BRANCH_PREFIX)}
        record["detector"] = os.path.relpath(os.path.abspath(detector), os.path.dirname(os.path.abspath(out)))
        record["detector_sha256"] = file_sha256(str(detector))
    else:
        record["model"] = state
    save_checkpoint(str(out), record)
    stem = out.with_suffix("")
    # the config beside the file loads from there (paths relative to it); logs name repository paths
    to_root = os.path.relpath(ROOT, out.resolve().parent) + os.sep
    for name, prefix in (("config.yaml", to_root), ("metrics.jsonl", ""), ("train.log", "")):
        if (run / name).exists():
            copy_text(run / name, Path(f"{stem}.{name}"), prefix)
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="training run folder (holds model_final.pt)")
    p.add_argument("out", type=Path, help="file to write")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--detector-only", action="store_true", help="ship all but the mask branch")
    group.add_argument("--detector", type=Path, help="ship the mask branch alone, referencing this shipped detector")
    args = p.parse_args(argv)
    record = ship(args.run, args.out, args.detector_only, args.detector)
    print(
        f"{args.out}: {args.out.stat().st_size / 2**20:.1f} MiB, {len(record['model'])} tensors, "
        f"iteration {record.get('iteration')}" + (f", detector {record['detector']}" if "detector" in record else "")
    )


if __name__ == "__main__":
    main()
