"""Turn a training run into a small checkpoint to ship: model weights in float16 (loaded back
into float32 parameters by load_state_dict), config, class names; no optimizer state.

    python tools/ship_checkpoint.py RUN_DIR OUT.pt

Also copies RUN_DIR's config.yaml and metrics.jsonl next to OUT.pt (as OUT.config.yaml and
OUT.metrics.jsonl), so the shipped file can be traced to the run that made it.
"""

import shutil
import sys
from pathlib import Path

import torch

from dynamask.engine.build import load_checkpoint, save_checkpoint


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.exit(__doc__)
    run, out = Path(argv[0]), Path(argv[1])
    ckpt = load_checkpoint(str(run / "model_final.pt"))
    ckpt["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    keep = ("model", "config", "class_names", "cat_ids", "num_classes", "iteration")
    save_checkpoint(str(out), {k: ckpt[k] for k in keep if k in ckpt})
    stem = out.with_suffix("")
    shutil.copyfile(run / "config.yaml", f"{stem}.config.yaml")
    shutil.copyfile(run / "metrics.jsonl", f"{stem}.metrics.jsonl")
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, iteration {ckpt.get('iteration')}")


if __name__ == "__main__":
    main()
