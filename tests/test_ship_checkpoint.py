"""Shipping one float16 detector and small head files that reference it (tools/ship_checkpoint.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from dynamask.config import load_config
from dynamask.engine.build import save_checkpoint
from dynamask.errors import DynaMaskError
from dynamask.inference import load_checkpoint, model_from_checkpoint
from dynamask.models import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from ship_checkpoint import repo_relative, ship  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(folder: Path, head: str, seed: int, detector_state=None) -> Path:
    cfg = load_config(
        None,
        {
            "model.backbone": "resnet18",
            "model.head": head,
            "model.fam": "conv",
            "model.policy": "fixed-28",
            "input.min_size": 64,
            "input.max_size": 64,
            "model.fpn_channels": 32,
            "model.box_representation_size": 64,
            "model.maskrcnn_head_channels": 16,
            "model.head_widths": [16, 16, 8, 8],
            "model.box_score_thresh": 0.0,
        },
    )
    torch.manual_seed(seed)
    model = build_model(cfg, 3)
    if detector_state is not None:
        model.load_detector_state(detector_state)
    folder.mkdir(parents=True)
    save_checkpoint(
        str(folder / "model_final.pt"),
        {"model": model.state_dict(), "config": cfg, "class_names": ["a", "b"], "num_classes": 3, "iteration": 5},
    )
    return folder


def test_detector_and_heads_round_trip(tmp_path):
    det_run = _run(tmp_path / "det", "maskrcnn", 0)
    shipped = tmp_path / "ship"
    shipped.mkdir()
    ship(det_run, shipped / "detector.pt", detector_only=True)
    detector_state = load_checkpoint(str(shipped / "detector.pt"))["model"]
    assert not any(k.startswith("roi_heads.mask_branch.") for k in detector_state)
    for head, seed in (("dynamask", 1), ("maskrcnn", 2)):
        run = _run(tmp_path / head, head, seed, {k: v.float() for k, v in detector_state.items()})
        record = ship(run, shipped / f"{head}.pt", detector=shipped / "detector.pt")
        assert record["detector"] == "detector.pt"
        assert all(k.startswith("roi_heads.mask_branch.") for k in record["model"])
        assert (shipped / f"{head}.pt").stat().st_size < (shipped / "detector.pt").stat().st_size / 3
        model, ckpt = model_from_checkpoint(str(shipped / f"{head}.pt"))
        reference, _ = model_from_checkpoint(str(run / "model_final.pt"))
        reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
        image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))]
        with torch.no_grad():
            a, b = model.eval()(image)[0], reference.eval()(image)[0]
        assert a["boxes"].shape[0] > 0 and torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["masks"], b["masks"])
    # the folder moves as a whole: relative references keep working
    moved = tmp_path / "elsewhere"
    shutil.copytree(shipped, moved)
    model_from_checkpoint(str(moved / "dynamask.pt"))


def test_head_refuses_other_detectors(tmp_path):
    det_run = _run(tmp_path / "det", "maskrcnn", 0)
    ship(det_run, tmp_path / "detector.pt", detector_only=True)
    other = _run(tmp_path / "other", "dynamask", 1)  # its own detector
    with pytest.raises(SystemExit, match="its detector differs"):
        ship(other, tmp_path / "head.pt", detector=tmp_path / "detector.pt")
    state = load_checkpoint(str(tmp_path / "detector.pt"))["model"]
    good = _run(tmp_path / "good", "dynamask", 1, {k: v.float() for k, v in state.items()})
    ship(good, tmp_path / "head.pt", detector=tmp_path / "detector.pt")
    (tmp_path / "detector.pt").rename(tmp_path / "detector_moved.pt")
    with pytest.raises(DynaMaskError, match="holds only a mask head; its detector 'detector.pt' was not found"):
        load_checkpoint(str(tmp_path / "head.pt"))
    ship(other, tmp_path / "detector.pt", detector_only=True)  # another detector under the same name
    with pytest.raises(DynaMaskError, match="is not the one this head was trained on"):
        load_checkpoint(str(tmp_path / "head.pt"))


def test_shipped_files_name_no_absolute_repository_path(tmp_path):
    inside = str(ROOT / "runs" / "data" / "train.json")
    cfg = {"data": {"train_json": inside, "val_json": "/elsewhere/val.json"}, "steps": [str(ROOT / "a"), 3]}
    assert repo_relative(cfg) == {
        "data": {"train_json": "runs/data/train.json", "val_json": "/elsewhere/val.json"},
        "steps": ["a", 3],
    }
    assert repo_relative(inside, ROOT / "checkpoints") == "../runs/data/train.json"
