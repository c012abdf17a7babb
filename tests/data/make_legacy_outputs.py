"""Writes legacy_outputs.json: what the two shipped checkpoints predicted on two shapes images
with the code as it was before the mask geometry became a setting (commit 8429604), so that
tests/test_geometry.py can check that checkpoints without a recorded geometry still give exactly
those results. Run from the repository root with that commit's ``src`` on PYTHONPATH:

    git worktree add /tmp/old 8429604 && PYTHONPATH=/tmp/old/src python tests/data/make_legacy_outputs.py
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from dynamask.data.shapes import make_shapes_tensors
from dynamask.inference import model_from_checkpoint

ROOT = Path(__file__).resolve().parents[2]
#: (checkpoint, policy to evaluate it under; None = its own)
RUNS = (("shapes_dynamask_r18", None), ("shapes_dynamask_r18", "fixed-112"), ("shapes_maskrcnn_r18", None))


def summarise(out: dict) -> dict:
    """Enough to tell any change in the predictions: boxes, scores, labels, resolutions, and per
    instance the summed mask probability and a digest of the mask binarised at 0.5."""
    masks = out["masks"][:, 0]
    binary = (masks >= 0.5).numpy()
    return {
        "boxes": out["boxes"].tolist(), "scores": out["scores"].tolist(), "labels": out["labels"].tolist(),
        "mask_resolution": out["mask_resolution"].tolist(),
        "mask_sum": masks.double().sum(dim=(1, 2)).tolist(),
        "mask_digest": [hashlib.sha1(np.packbits(b).tobytes()).hexdigest() for b in binary],
    }


def predict_all() -> dict:
    torch.manual_seed(0)
    images, _ = make_shapes_tensors(3, image_size=128, seed=11)
    result = {}
    for name, policy in RUNS:
        model, _ = model_from_checkpoint(str(ROOT / "checkpoints" / f"{name}.pt"))
        if policy:
            model.policy = policy
        model.eval()
        with torch.no_grad():
            result[f"{name}@{policy or 'own'}"] = [summarise(o) for o in model(images)]
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    path = Path(__file__).with_name("legacy_outputs.json")
    path.write_text(json.dumps(predict_all()) + "\n")
    print(f"wrote {path}")
