"""The confidence-aware cost switch: the detector's scores reach it, an unlikely detection stops at
14×14, checkpoints from before choose as they did, the dial stays monotone, and a held-out
calibration makes the budget hold on detections."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dynamask.data import CocoInstanceDataset, generate_shapes_dataset
from dynamask.engine.calibrate import calibrate_switch, fit_score_map
from dynamask.inference import model_from_checkpoint
from dynamask.models import dynamask_resnet18_fpn
from dynamask.models.mask_switch import CostSwitch
from dynamask.models.policy import choose_under_budget

ROOT = Path(__file__).resolve().parents[1]
#: a dynamic head written before the confidence-aware switch (the 256-px benchmark's, uncalibrated)
OLD_HEAD = ROOT / "benchmarks" / "results" / "accuracy_vs_cost_256_heads" / "dynamic@0.4.pt"
#: the demo's head: a benchmark head (SHIPPED_SOURCE) calibrated on held-out detections (switch_quality_256.py)
SHIPPED_HEAD = ROOT / "checkpoints" / "shapes_detail_dynamask_c64.pt"
#: the benchmark head the demo's is, before calibration (checkpoints/README.md)
SHIPPED_SOURCE = ROOT / "benchmarks" / "results" / "accuracy_vs_cost_256_heads" / "sparse-dynamic@0.7.pt"


def _small_model(**kw):
    torch.manual_seed(0)
    return dynamask_resnet18_fpn(
        4,
        policy="dynamic",
        fam="conv",
        fpn_channels=32,
        box_representation_size=64,
        widths=(16, 16, 8, 8),
        reduced_channels=(8, 8, 8),
        min_size=96,
        max_size=96,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        **kw,
    )


def test_detection_scores_reach_the_switch():
    model = _small_model().eval()
    model.mask_branch.switch_log = []
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96), torch.rand(3, 96, 96)])
    ((outputs, scores),) = model.mask_branch.switch_log
    assert scores is not None and outputs.shape[0] == scores.shape[0] > 0
    assert torch.equal(scores, torch.cat([o["scores"] for o in out]))


def test_unlikely_detection_stops_at_14_even_when_compute_is_cheap():
    switch = CostSwitch(16)
    assert int(switch.uses_score) == 1  # new heads are confidence-aware
    fractions = torch.tensor([0.05, 0.2, 0.5, 1.0])
    outputs = torch.tensor([[1.5, 0.8, 0.3, 0.0]]).repeat(6, 1)  # the finest stage looks best by far
    switch.price.fill_(1e-3)  # and compute is nearly free
    confident = switch.scores(outputs, fractions, torch.ones(6)).argmax(dim=1)
    assert confident.tolist() == [3] * 6
    for s in (0.0, 1e-4, 1e-6):
        unlikely = switch.scores(outputs, fractions, torch.full((6,), s)).argmax(dim=1)
        assert unlikely.tolist() == [0] * 6, s


def test_checkpoints_from_before_choose_as_they_did():
    """A state dict written before the confidence-aware switch (no uses_score / score_map) loads
    and ignores the detector's scores: the same choices whatever the scores."""
    model = _small_model()
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(("uses_score", "score_map"))}
    old = _small_model()
    old.load_state_dict(state)
    switch = old.mask_branch.switch
    assert int(switch.uses_score) == 0
    outputs = torch.randn(50, 4)
    fractions = torch.tensor([0.05, 0.2, 0.5, 1.0])
    switch.price.fill_(0.3)
    base = switch.scores(outputs, fractions).argmax(dim=1)
    for s in (torch.zeros(50), torch.rand(50), torch.ones(50)):
        assert torch.equal(switch.scores(outputs, fractions, s).argmax(dim=1), base)
    # and a head file written before too; the demo's head is a benchmark head calibrated
    old_head, _ = model_from_checkpoint(str(OLD_HEAD))
    assert int(old_head.mask_branch.switch.uses_score) == 0
    shipped, ckpt = model_from_checkpoint(str(SHIPPED_HEAD))
    assert int(shipped.mask_branch.switch.uses_score) == 1 and ckpt["calibration"]["reachable"]
    trained, _ = model_from_checkpoint(str(SHIPPED_SOURCE))
    assert int(trained.mask_branch.switch.uses_score) == 0
    assert torch.equal(shipped.mask_branch.switch.fc2.weight, trained.mask_branch.switch.fc2.weight)


def test_dial_stays_monotone_with_scores():
    torch.manual_seed(1)
    switch = CostSwitch(16)
    switch.price.fill_(0.1)
    costs = torch.tensor([1.0, 2.5, 6.0, 13.0])
    outputs = torch.rand(200, 4) * 2
    weighted = switch.scores(outputs, costs / costs[-1], torch.rand(200))
    means = [
        float(costs[choose_under_budget(weighted, costs, b)].mean() / costs[-1])
        for b in (1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.1)
    ]
    assert all(a >= b - 1e-9 for a, b in zip(means, means[1:]))
    assert means[-1] <= 0.1 + 1e-6 or means[-1] == pytest.approx(float(costs[0] / costs[-1]))


def test_fit_score_map_is_monotone_and_keeps_the_identity_where_empty():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 0.6, 500)
    real = rng.uniform(size=500) < scores**2  # a detector that is overconfident
    knots = np.linspace(0, 1, 11)
    fitted = fit_score_map(scores, real, knots)
    assert np.all(np.diff(fitted) >= -1e-12)
    assert fitted[3] < 0.3 - 0.1  # P(real | 0.3) ≈ 0.09, well under the raw score
    assert fitted[-1] == pytest.approx(1.0, abs=0.35)  # no data there: pulled towards the identity


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Two small detailed-shapes splits of other seeds than the shipped heads' data (seed 0)."""
    out = {}
    for seed, images in ((1, 12), (2, 8)):
        root = tmp_path_factory.mktemp(f"held_out_{seed}")
        generate_shapes_dataset(root, 0, images, image_size=256, seed=seed, detail=True)
        out[seed] = CocoInstanceDataset(
            str(root / "val.json"), str(root / "val"), transforms=None, keep_empty=True, validate_masks=False
        )
    return out


def _mean_cost_share(model, dataset) -> float:
    flops = []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, _ = dataset[i]
            flops.append(model([torch.as_tensor(image).float()])[0]["mask_flops"])
    costs = model.mask_branch.stage_costs(with_switch=True)
    return float(torch.cat(flops).double().mean() / costs[-1])


def test_calibration_makes_the_budget_hold_on_detections(held_out):
    """The 256-px benchmark's dynamic@0.4 head (trained at budget 0.4 on positive proposals), calibrated on a
    held-out split: the mean mask cost over the detections the model returns (its own
    ``mask_flops``) meets the target within 10 % on that split, and stays near it on another one
    (8 images, ~60 detections: sampling noise of about ±30 % measured, hence the wider bound)."""
    model, _ = model_from_checkpoint(str(OLD_HEAD))
    model.eval()
    target = 0.3
    report = calibrate_switch(model, held_out[1], target=target, progress=False)
    assert report["reachable"], report
    assert report["achieved"] == pytest.approx(target, rel=0.05)
    assert int(model.mask_branch.switch.uses_score) == 1
    assert report["real_fraction"] < 0.9  # the detections include false ones: that is the point
    assert _mean_cost_share(model, held_out[1]) == pytest.approx(target, rel=0.10)
    assert _mean_cost_share(model, held_out[2]) == pytest.approx(target, rel=0.40)


def test_calibrate_command_writes_a_calibrated_checkpoint(held_out, tmp_path, capsys):
    from dynamask.cli import main

    data, root = held_out[2].ann_file, held_out[2].image_dir
    out = tmp_path / "calibrated.pt"
    code = main(
        [
            "calibrate",
            "--weights",
            str(OLD_HEAD),
            "--data-json",
            str(data),
            "--data-images",
            str(root),
            "--out",
            str(out),
            "--max-images",
            "3",
            "--target",
            "0.35",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    model, ckpt = model_from_checkpoint(str(out))  # a head file: its detector is found from the new place
    assert int(model.mask_branch.switch.uses_score) == 1
    assert ckpt["calibration"]["target"] == pytest.approx(0.35) and ckpt["calibration"]["images"] == 3
    assert (
        main(
            [
                "calibrate",
                "--weights",
                str(out),
                "--data-json",
                str(data),
                "--data-images",
                str(root),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "new file" in capsys.readouterr().err


def test_score_floor_stops_detections_at_14_without_the_switch():
    """model.mask_score_floor: a gated detection never reaches the switch and is charged only
    stage 0; the rest choose as without the floor (the score-gated control of the benchmarks)."""
    model = _small_model().eval()
    head = model.mask_branch
    images = [torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        free = model(images)
    scores = torch.cat([o["scores"] for o in free])
    floor = float(scores.median())
    assert 0 < floor < 1
    model.mask_score_floor = floor
    head.switch_log = []
    with torch.no_grad():
        gated = model(images)
    ((outputs, seen),) = head.switch_log
    below = scores < floor
    assert 0 < int(below.sum()) < scores.numel()
    assert outputs.shape[0] == int((~below).sum()) and bool((seen >= floor).all())
    res = torch.cat([o["mask_resolution"] for o in gated])
    flops = torch.cat([o["mask_flops"] for o in gated])
    assert bool((res[below] == 14).all())
    assert torch.allclose(flops[below], head.stage_costs(with_switch=False)[0].float().expand(int(below.sum())))
    assert torch.equal(res[~below], torch.cat([o["mask_resolution"] for o in free])[~below])
    # a fixed policy gated the same way: 112 above the floor, 14 below
    model.policy = "fixed-112"
    with torch.no_grad():
        fixed = torch.cat([o["mask_resolution"] for o in model(images)])
    assert bool((fixed[below] == 14).all()) and bool((fixed[~below] == 112).all())
    with pytest.raises(ValueError, match="mask_score_floor"):
        model.mask_score_floor = 1.5


def test_choice_hook_dictates_the_stages_and_they_are_charged():
    model = _small_model().eval()
    head = model.mask_branch
    calls = []

    def all_at_56(choice, inp, counts):
        calls.append((choice.clone(), sum(counts)))
        return torch.full_like(choice, 2)

    head.choice_hook = all_at_56
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96)])[0]
    assert calls and calls[0][1] == out["boxes"].shape[0] > 0
    assert bool((out["mask_resolution"] == 56).all())
    assert torch.allclose(out["mask_flops"], head.stage_costs(with_switch=True)[2].float().expand_as(out["mask_flops"]))
    head.choice_hook = None
    with torch.no_grad():
        again = model([torch.rand(3, 96, 96)])[0]
    assert again["mask_resolution"].numel() > 0


def test_score_floor_from_the_config():
    from dynamask.config import load_config
    from dynamask.models.detector import build_model

    cfg = load_config(None, ["model.mask_score_floor=0.3", "model.backbone=resnet18", "model.fpn_channels=32"])
    model = build_model(cfg, 3)
    assert model.mask_score_floor == pytest.approx(0.3) and model.mask_branch.score_floor == pytest.approx(0.3)


def test_score_floor_for_cost_meets_the_target():
    from dynamask.models.policy import score_floor_for_cost

    scores = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    for target in (0.2, 0.5, 0.9):
        floor = score_floor_for_cost(scores, 0.1, 1.0, target)
        gated = (scores < floor).float()
        assert abs(float((gated * 0.1 + (1 - gated) * 1.0).mean()) - target) < 0.005
    assert score_floor_for_cost(scores, 0.1, 1.0, 1.0) == 0.0  # no floor needed
    assert score_floor_for_cost(scores, 0.1, 1.0, 0.05) == 1.0  # everything gated, as near as it gets
    assert score_floor_for_cost(torch.zeros(0), 0.1, 1.0, 0.5) == 0.0
