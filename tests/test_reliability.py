"""Fault tolerance: kill -9 then --resume, full disk, failed checkpoint writes, checkpoints that
do not fit the requested model."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch
from narrow_model import NARROW_MODEL

from dynamask import cli
from dynamask.config import load_config, save_config
from dynamask.data import generate_shapes_dataset
from dynamask.engine import build as build_mod
from dynamask.engine import checkpointing as checkpointing_mod
from dynamask.engine import training_run as training_run_mod
from dynamask.engine.train import train
from dynamask.errors import DynaMaskError
from dynamask.inference import load_checkpoint, model_from_checkpoint

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), 8, 3, image_size=64)


def overrides(shapes, **extra):
    ov = {
        "data.train_json": shapes["train_json"],
        "data.train_images": shapes["train_dir"],
        "data.val_json": shapes["val_json"],
        "data.val_images": shapes["val_dir"],
        **NARROW_MODEL,
        "model.maskrcnn_head_channels": 16,
        "input.min_size": 64,
        "input.max_size": 64,
        "solver.ims_per_batch": 2,
        "solver.max_iter": 12,
        "solver.log_period": 1,
        "solver.checkpoint_period": 2,
        "solver.warmup_iters": 2,
        "solver.base_lr": 0.01,
        "test.eval_period": 0,
        "seed": 5,
    }
    ov.update(extra)
    return ov


def cfg_of(shapes, **extra):
    return load_config(None, overrides(shapes, **extra))


@pytest.fixture(scope="module")
def straight(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    summary = train(cfg_of(shapes), str(out), progress=False)
    return out, summary


def _iterations(path):
    with open(path, encoding="utf-8") as f:
        return [r["iteration"] for r in map(json.loads, f) if "event" not in r]


def test_kill9_then_resume_reaches_the_same_final_metrics(shapes, straight, tmp_path):
    ref_dir, ref = straight
    out = tmp_path / "killed"
    config = tmp_path / "cfg.yaml"
    save_config(cfg_of(shapes), str(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynamask",
            "train",
            "--config",
            str(config),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt_path = out / "checkpoint_last.pt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt_path.exists():
            killed_at = load_checkpoint(str(ckpt_path))["iteration"]  # atomic: never a torn file
            if killed_at >= 4:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert not (out / "model_final.pt").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".") and ".tmp" in p or p.endswith(".pt.tmp")]
    resumed_from = load_checkpoint(str(ckpt_path))["iteration"]
    assert 4 <= resumed_from < 12

    summary = train(cfg_of(shapes), str(out), resume=True, progress=False)
    assert summary["iteration"] == 12
    # at most the iterations after the last checkpoint were lost and redone; the log has each once
    assert _iterations(out / "metrics.jsonl") == list(range(1, 13))
    a = load_checkpoint(str(ref_dir / "model_final.pt"))["model"]
    b = load_checkpoint(str(out / "model_final.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ref_eval, eval_ = ref["eval"], summary["eval"]
    assert ref_eval is not None and eval_ is not None
    for k in ("bbox_AP", "segm_AP", "boundary_AP", "mask_gflops_per_instance", "num_detections"):
        assert eval_[k] == pytest.approx(ref_eval[k], abs=1e-9), k


def test_full_disk_is_reported_before_training(shapes, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(checkpointing_mod.shutil, "disk_usage", lambda p: Usage(10 * 2**20, 10 * 2**20 - 2**20, 2**20))
    called = []
    real_build = training_run_mod.build_model
    monkeypatch.setattr(training_run_mod, "build_model", lambda *a: called.append(1) or real_build(*a))
    out = tmp_path / "full"
    with pytest.raises(DynaMaskError) as info:
        train(cfg_of(shapes), str(out), progress=False)
    msg = str(info.value)
    assert str(out) in msg and "MiB free" in msg and "checkpoint" in msg
    assert called and not any(f.endswith(".pt") or f == "metrics.jsonl" for f in os.listdir(out))


def test_failed_checkpoint_write_keeps_the_previous_one(shapes, tmp_path, monkeypatch):
    out = tmp_path / "enospc"
    real_save = build_mod.save_checkpoint
    calls = {"n": 0}

    def save(path, state):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, state)

    monkeypatch.setattr(checkpointing_mod, "save_checkpoint", save)
    with pytest.raises(DynaMaskError) as info:
        train(cfg_of(shapes), str(out), progress=False)
    msg = str(info.value)
    assert "checkpoint_last.pt" in msg and "iteration 4" in msg and "No space left" in msg
    assert "intact" in msg and "--resume" in msg
    assert load_checkpoint(str(out / "checkpoint_last.pt"))["iteration"] == 2


def test_checkpoint_carries_hyper_parameters_and_loads_weights_only(straight):
    out, _ = straight
    ckpt = torch.load(out / "model_final.pt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert hp["backbone"] == "resnet18" and hp["head"] == "dynamask" and hp["policy"] == "dynamic"
    assert hp["num_classes"] == 9 and hp["head_widths"] == [16, 16, 8, 8]
    assert ckpt["class_names"][0] == "ellipse" and set(ckpt["versions"]) >= {"dynamask", "torch", "torchvision"}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"model.backbone": "resnet34"}, "backbone: checkpoint 'resnet18', requested 'resnet34'"),
        ({"model.head": "maskrcnn"}, "head: checkpoint 'dynamask', requested 'maskrcnn'"),
        ({"model.head_widths": [32, 16, 8, 8]}, "head_widths"),
        ({"model.fpn_channels": 64}, "fpn_channels"),
    ],
)
def test_checkpoint_that_does_not_fit_is_named(shapes, straight, tmp_path, change, needle, capsys):
    out, _ = straight
    weights = str(out / "model_final.pt")
    with pytest.raises(DynaMaskError) as info:
        model_from_checkpoint(weights, cfg_of(shapes, **change))
    assert needle in str(info.value) and weights in str(info.value)
    # the same through the command line: one line, exit 2
    config = tmp_path / "other.yaml"
    save_config(cfg_of(shapes, **change), str(config))
    rc = cli.main(["evaluate", "--weights", weights, "--config", str(config), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and needle in err[-1]
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_policy_and_class_mismatches(shapes, straight, tmp_path):
    out, _ = straight
    weights = str(out / "model_final.pt")
    # a dynamic model can be evaluated as fixed-28 (it has the stages): allowed
    model, _ = model_from_checkpoint(weights, cfg_of(shapes, **{"model.policy": "fixed-28"}))
    assert model.policy == "fixed-28"
    # a fixed-28 model cannot be asked for 112 or for the switch
    small = tmp_path / "fixed28"
    train(
        cfg_of(
            shapes,
            **{
                "model.policy": "fixed-28",
                "solver.max_iter": 1,
                "test.eval_period": 0,
                "data.val_json": None,
                "data.val_images": None,
            },
        ),
        str(small),
        progress=False,
    )
    for policy in ("fixed-112", "dynamic"):
        with pytest.raises(DynaMaskError, match=f"policy: checkpoint 'fixed-28'.*requested '{policy}'"):
            model_from_checkpoint(str(small / "model_final.pt"), cfg_of(shapes, **{"model.policy": policy}))
    # fine-tuning on a dataset with other classes names both class counts and the checkpoint's classes
    other = generate_shapes_dataset(tmp_path / "other", 2, 1, image_size=64)
    data = json.loads(open(other["train_json"]).read())
    data["categories"] = data["categories"][:3]
    keep = {c["id"] for c in data["categories"]}
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep]
    with open(other["train_json"], "w") as f:
        json.dump(data, f)
    with pytest.raises(DynaMaskError) as info:
        train(
            cfg_of(
                shapes,
                **{
                    "model.init_weights": weights,
                    "data.train_json": other["train_json"],
                    "data.train_images": other["train_dir"],
                    "data.val_json": None,
                    "data.val_images": None,
                },
            ),
            str(tmp_path / "ft"),
            progress=False,
        )
    msg = str(info.value)
    assert "model.init_weights" in msg and "classes: checkpoint 8 (ellipse" in msg and "requested 3" in msg
