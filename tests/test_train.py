"""Training loop: outputs, exact resume, non-finite losses, signals, output-dir checks, 2-process DDP."""

import json
import math
import os
import signal
import subprocess

import pytest
import torch
from narrow_model import NARROW_MODEL
from torchrun_launch import TORCHRUN, torchrun_env

from dynamask.config import load_config, save_config
from dynamask.data import generate_shapes_dataset
from dynamask.engine import training_run as training_run_mod
from dynamask.engine.train import (
    InfiniteShardSampler,
    NonFiniteLossError,
    SeededDataset,
    TrainingInterrupted,
    get_rng_state,
    make_lr_lambda,
    set_rng_state,
    train,
)
from dynamask.errors import ConfigError, DynaMaskError
from dynamask.inference import load_checkpoint, model_from_checkpoint

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

LOSS_KEYS = (
    "loss_classifier",
    "loss_box_reg",
    "loss_objectness",
    "loss_rpn_box_reg",
    "loss_mask_14",
    "loss_mask_28",
    "loss_mask_56",
    "loss_mask_112",
    "loss_mask_edge",
    "loss_mask_select",
    "loss_mask_budget",
    "loss_mask_switch",
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes"), 8, 4, image_size=64)


def small_overrides(shapes, **extra):
    ov = {
        "data.train_json": shapes["train_json"],
        "data.train_images": shapes["train_dir"],
        **NARROW_MODEL,
        "model.maskrcnn_head_channels": 16,
        "input.min_size": 64,
        "input.max_size": 64,
        "solver.ims_per_batch": 2,
        "solver.max_iter": 4,
        "solver.log_period": 1,
        "solver.checkpoint_period": 0,
        "solver.warmup_iters": 2,
        "solver.base_lr": 0.02,
        "seed": 3,
    }
    ov.update(extra)
    return ov


def small_cfg(shapes, **extra):
    return load_config(None, small_overrides(shapes, **extra))


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def patch_forward(monkeypatch, hook):
    """Make train() build models whose forward calls hook(call_index, losses) -> losses."""
    real_build = training_run_mod.build_model

    def build(cfg, num_classes):
        model = real_build(cfg, num_classes)
        orig = model.forward
        calls = {"n": 0}

        def forward(images, targets=None):
            out = orig(images, targets)
            calls["n"] += 1
            return hook(calls["n"], out) if model.training else out

        model.forward = forward
        return model

    monkeypatch.setattr(training_run_mod, "build_model", build)


@pytest.fixture(scope="module")
def straight_run(shapes, tmp_path_factory):
    """4 iterations in one go (the reference for the resume tests)."""
    out = tmp_path_factory.mktemp("straight")
    summary = train(small_cfg(shapes), str(out), progress=False)
    return out, summary


# ---------------------------------------------------------------- unit pieces


def test_lr_schedule_warmup_and_steps():
    f = make_lr_lambda(warmup_iters=4, warmup_factor=0.1, steps=[6, 8], gamma=0.5)
    assert f(0) == pytest.approx(0.1)
    assert f(2) == pytest.approx(0.55)
    assert f(4) == f(5) == 1.0
    assert f(6) == f(7) == 0.5
    assert f(8) == 0.25
    assert make_lr_lambda(0, 0.001, [], 0.1)(0) == 1.0


def test_sampler_is_deterministic_resumable_and_sharded():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    full = take(InfiniteShardSampler(5, seed=1), 12)
    assert [e for e, _ in full] == [0] * 5 + [1] * 5 + [2] * 2
    assert sorted(i for e, i in full if e == 0) == list(range(5))
    assert full[:5] != full[5:10]  # reshuffled each epoch
    assert take(InfiniteShardSampler(5, seed=1, start_epoch=1, start_position=2), 5) == full[7:12]
    r0 = take(InfiniteShardSampler(5, seed=1, rank=0, world_size=2), 3)
    r1 = take(InfiniteShardSampler(5, seed=1, rank=1, world_size=2), 3)
    assert sorted({i for _, i in r0} | {i for _, i in r1}) == list(range(5))  # padded shards cover all


def test_seeded_dataset_is_pure_and_leaves_global_rng_alone(shapes):
    from dynamask.data import CocoInstanceDataset, build_transforms

    ds = CocoInstanceDataset(
        shapes["train_json"],
        shapes["train_dir"],
        transforms=build_transforms(True, min_size=[48, 64], max_size=64, flip_prob=0.5, color_jitter=True),
    )
    sds = SeededDataset(ds, seed=5)
    before = torch.get_rng_state()
    a = [sds[(e, 2)][0] for e in range(4)]
    assert torch.equal(torch.get_rng_state(), before)
    b = [sds[(e, 2)][0] for e in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert type(a[0]) is torch.Tensor
    assert any(not (x.shape == a[0].shape and torch.equal(x, a[0])) for x in a[1:])  # epochs differ


def test_rng_state_roundtrip_is_weights_only_loadable(tmp_path):
    import random

    import numpy as np

    state = get_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)
    x = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    set_rng_state(loaded)
    y = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(x[0], y[0]) and np.array_equal(x[1], y[1]) and x[2] == y[2]


# ---------------------------------------------------------------- full runs


def test_train_writes_outputs(straight_run):
    out, summary = straight_run
    for name in ("config.yaml", "metrics.jsonl", "checkpoint_last.pt", "model_final.pt"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert summary["iteration"] == 4 and summary["nonfinite_steps"] == 0
    assert math.isfinite(summary["total_loss"])

    records = read_jsonl(out / "metrics.jsonl")
    logs = [r for r in records if "event" not in r]
    assert [r["iteration"] for r in logs] == [1, 2, 3, 4]
    for r in logs:
        for key in LOSS_KEYS + ("total_loss", "lr", "time_per_iter", "images_per_s"):
            assert key in r, key
        assert r["total_loss"] == pytest.approx(sum(v for k, v in r.items() if k.startswith("loss_")), rel=1e-5)
    # LR used by each step: warm-up over 2 steps from factor 0.001, base lr scaled to the batch (0.02 * 2 / 16)
    assert logs[0]["lr"] == pytest.approx(0.0025 * 0.001)
    assert logs[1]["lr"] == pytest.approx(0.0025 * (0.001 * 0.5 + 0.5))
    assert logs[2]["lr"] == logs[3]["lr"] == pytest.approx(0.0025)
    assert records[-1]["event"] == "final"

    cfg = load_config(out / "config.yaml")
    assert cfg["solver"]["max_iter"] == 4 and cfg["output_dir"] == str(out)

    final = torch.load(out / "model_final.pt", map_location="cpu", weights_only=True)
    assert {"model", "config", "class_names", "cat_ids", "num_classes", "iteration", "versions"} <= set(final)
    assert "optimizer" not in final
    assert final["class_names"][:2] == ["ellipse", "rectangle"] and final["num_classes"] == 9
    last = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert {"optimizer", "scheduler", "rng", "data"} <= set(last) and last["iteration"] == 4
    model, _ = model_from_checkpoint(str(out / "model_final.pt"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _assert_same_weights(a_path, b_path):
    a = torch.load(a_path, map_location="cpu", weights_only=True)
    b = torch.load(b_path, map_location="cpu", weights_only=True)
    assert a["iteration"] == b["iteration"]
    assert set(a["model"]) == set(b["model"])
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), rtol=0, atol=1e-7), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.allclose(sa["momentum_buffer"], sb["momentum_buffer"], rtol=0, atol=1e-7)


def test_resume_matches_straight_run(shapes, straight_run, tmp_path):
    ref, _ = straight_run
    out = tmp_path / "halves"
    first = train(small_cfg(shapes, **{"solver.max_iter": 2}), str(out), progress=False)
    assert first["iteration"] == 2
    summary = train(small_cfg(shapes), str(out), resume=True, progress=False)
    assert summary["iteration"] == 4
    _assert_same_weights(ref / "checkpoint_last.pt", out / "checkpoint_last.pt")
    # the log continues where it stopped (no duplicate iterations)
    its = [r["iteration"] for r in read_jsonl(out / "metrics.jsonl") if "event" not in r]
    assert its == [1, 2, 3, 4]


def test_sigint_writes_checkpoint_then_resume_is_exact(shapes, straight_run, tmp_path, monkeypatch):
    ref, _ = straight_run
    out = tmp_path / "interrupted"

    def hook(n, losses):
        if n == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return losses

    patch_forward(monkeypatch, hook)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(small_cfg(shapes), str(out), progress=False)
    msg = str(info.value)
    assert "interrupted" in msg and "iteration 2" in msg and "--resume" in msg
    assert str(out / "checkpoint_last.pt") in msg
    assert isinstance(info.value, DynaMaskError) and info.value.iteration == 2
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert load_checkpoint(str(out / "checkpoint_last.pt"))["iteration"] == 2
    assert not (out / "model_final.pt").exists()

    monkeypatch.undo()
    summary = train(small_cfg(shapes), str(out), resume=True, progress=False)
    assert summary["iteration"] == 4
    _assert_same_weights(ref / "checkpoint_last.pt", out / "checkpoint_last.pt")


def test_nonfinite_losses_skipped_then_abort(shapes, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    bad = {2, 4, 5}

    def hook(n, losses):
        if n in bad:
            losses = dict(losses)
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses

    patch_forward(monkeypatch, hook)
    cfg = small_cfg(shapes, **{"solver.max_iter": 8, "solver.max_nonfinite_steps": 2})
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, str(out), progress=False)
    msg = str(info.value)
    assert "iteration 5" in msg and "max_nonfinite_steps" in msg and "checkpoint" in msg
    assert isinstance(info.value, DynaMaskError)

    records = read_jsonl(out / "metrics.jsonl")  # strict JSON (NaN written as "nan")
    events = [r for r in records if r.get("event") == "nonfinite_loss"]
    assert [r["iteration"] for r in events] == [2, 4, 5]
    assert events[0]["losses"]["loss_classifier"] == "nan"
    assert [r["iteration"] for r in records if "event" not in r] == [1, 3]  # skipped steps are not averaged in
    ckpt = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert ckpt["iteration"] == 5
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    # one non-finite step only: training completes
    bad.clear()
    bad.add(2)
    summary = train(
        small_cfg(shapes, **{"solver.max_iter": 3, "solver.max_nonfinite_steps": 2}),
        str(tmp_path / "nan_once"),
        progress=False,
    )
    assert summary["iteration"] == 3 and summary["nonfinite_steps"] == 1


def test_unwritable_output_dir_fails_before_training(shapes, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(training_run_mod, "build_model", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(DynaMaskError) as info:
        train(small_cfg(shapes), str(blocker / "run"), progress=False)
    assert str(blocker / "run") in str(info.value)
    with pytest.raises(DynaMaskError) as info:
        train(small_cfg(shapes), str(blocker), progress=False)
    assert str(blocker) in str(info.value)


def test_resume_without_checkpoint_and_missing_data_keys(shapes, tmp_path):
    with pytest.raises(DynaMaskError, match="no checkpoint to resume"):
        train(small_cfg(shapes), str(tmp_path / "fresh"), resume=True, progress=False)
    cfg = small_cfg(shapes, **{"data.train_json": None})
    with pytest.raises(ConfigError, match="data.train_json"):
        train(cfg, str(tmp_path / "nodata"), progress=False)
    with pytest.raises(ConfigError, match="model.num_classes"):
        train(small_cfg(shapes, **{"model.num_classes": 3}), str(tmp_path / "classes"), progress=False)


def test_periodic_checkpoint_and_eval_during_training(shapes, tmp_path):
    pytest.importorskip("dynamask.engine.evaluate")
    out = tmp_path / "with_eval"
    cfg = small_cfg(
        shapes,
        **{
            "solver.max_iter": 2,
            "solver.checkpoint_period": 1,
            "test.eval_period": 1,
            "data.val_json": shapes["val_json"],
            "data.val_images": shapes["val_dir"],
            "test.max_dets": 10,
            "solver.amp": "bf16",
        },
    )  # amp: ignored on CPU
    summary = train(cfg, str(out), progress=False)
    evals = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert [r["iteration"] for r in evals] == [1, 2]
    assert isinstance(summary["eval"], dict) and "segm_AP" in summary["eval"]
    assert (out / "eval" / "metrics.json").is_file()


def test_ddp_two_processes_gloo(shapes, tmp_path):
    cfg = small_cfg(shapes, **{"solver.max_iter": 3, "solver.checkpoint_period": 2})
    cfg_path = tmp_path / "ddp.yaml"
    save_config(cfg, cfg_path)
    out = tmp_path / "ddp_out"
    env = torchrun_env()
    cmd = [
        *TORCHRUN,
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dynamask",
        "train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    final = read_jsonl(out / "metrics.jsonl")[-1]
    assert final["event"] == "final" and final["world_size"] == 2
    hashes = final["weights_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks ended with identical weights
    ckpt = load_checkpoint(str(out / "checkpoint_last.pt"))
    assert ckpt["iteration"] == 3 and ckpt["rng"]["world_size"] == 2 and len(ckpt["rng"]["states"]) == 2
    assert ckpt["data"]["per_rank_batch"] == 1
    assert (out / "model_final.pt").is_file()


def test_data_stream_is_independent_of_worker_count(shapes):
    """Batches are a pure function of (seed, epoch, index): same with 0 or 2 loader workers."""
    from dynamask.data import CocoInstanceDataset, build_transforms, collate_fn

    ds = CocoInstanceDataset(
        shapes["train_json"],
        shapes["train_dir"],
        transforms=build_transforms(True, min_size=[48, 64], max_size=64, flip_prob=0.5, color_jitter=True),
    )

    def batches(workers, start_position=0, n=5):
        sampler = InfiniteShardSampler(len(ds), seed=2, start_position=start_position)
        loader = torch.utils.data.DataLoader(
            SeededDataset(ds, seed=2),
            batch_size=2,
            sampler=sampler,
            num_workers=workers,
            collate_fn=collate_fn,
            generator=torch.Generator().manual_seed(2),
        )
        it = iter(loader)
        out = [next(it) for _ in range(n)]
        del it
        return out

    a, b = batches(0), batches(2)
    c = batches(2, start_position=4, n=3)  # skip two batches, as a resumed run does
    for (ia, ta), (ib, tb) in zip(a, b):
        assert all(torch.equal(x, y) for x, y in zip(ia, ib))
        assert all(torch.equal(x["masks"], y["masks"]) for x, y in zip(ta, tb))
    for (ia, _), (ic, _) in zip(a[2:], c):
        assert all(torch.equal(x, y) for x, y in zip(ia, ic))
