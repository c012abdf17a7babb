"""Point-sparse refinement (model.refinement="points"): point selection, where points read the
features and the ground truth, FLOPs against the counter, the option's plumbing (configs,
checkpoints, refusals) and a small overfit against the dense head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from dynamask.config import load_config
from dynamask.errors import DynaMaskError
from dynamask.models import RESOLUTIONS, build_model, dynamask_resnet18_fpn
from dynamask.models.dynamask_head import DynaMaskHead
from dynamask.models.flops import count_flops
from dynamask.models.paste import paste_masks
from dynamask.models.point_refine import (
    PointStage,
    grid_cell_points,
    importance_points,
    most_uncertain_cells,
    point_targets,
    refine_at_points,
    sample_in_image,
    sample_in_rois,
    upsample2,
)
from dynamask.models.roi_utils import level_scale

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 96
ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(
    min_size=SIZE,
    max_size=SIZE,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=32,
    fpn_channels=32,
    box_representation_size=64,
    widths=(32, 24, 16, 12),
    reduced_channels=(8, 8, 4),
)


def head_inputs(n_boxes=12, channels=32, size=SIZE, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    features = {
        str(i): torch.randn(batch, channels, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=g) for i in range(4)
    }
    boxes, labels = [], []
    for _ in range(batch):
        xy = torch.rand(n_boxes, 2, generator=g) * (size * 0.6)
        wh = 4 + torch.rand(n_boxes, 2, generator=g) * (size * 0.4)
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(1, 3, (n_boxes,), generator=g))
    return features, boxes, labels, [(size, size)] * batch


# ----------------------------------------------------------------------------- point selection
def test_most_uncertain_cells_are_the_smallest_absolute_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1, 8, 8, generator=g)
    idx = most_uncertain_cells(logits, 10)
    flat = logits.flatten(1).abs()
    for row in range(5):
        chosen = flat[row, idx[row]]
        others = torch.ones(64, dtype=torch.bool)
        others[idx[row]] = False
        assert len(set(idx[row].tolist())) == 10
        assert float(chosen.max()) <= float(flat[row, others].min())
    assert most_uncertain_cells(logits, 1000).shape == (5, 64)  # never more than the grid


def test_refined_map_is_the_upsampled_coarse_map_with_the_chosen_cells_rewritten():
    torch.manual_seed(0)
    stage = PointStage(8, 4, 6, 10, 1)
    with torch.no_grad():
        stage.out.weight.normal_(0, 1.0)  # a stage whose corrections are far from zero
    features, boxes, labels, shapes = head_inputs(n_boxes=4, channels=8)
    rois = torch.cat([torch.zeros(4, 1), boxes[0]], 1)
    coarse = torch.randn(4, 1, 14, 14)
    region = torch.randn(4, 6, 28, 28)
    with torch.no_grad():
        out = refine_at_points(stage, coarse, 50, features["1"], rois, region, labels[0], shapes)
    up = upsample2(coarse)
    assert out.shape == (4, 1, 28, 28)
    changed = (out != up).flatten(1)
    chosen = torch.zeros_like(changed)
    chosen.scatter_(1, most_uncertain_cells(up, 50), True)
    assert not bool((changed & ~chosen).any())  # nothing outside the chosen cells moves
    assert int(changed.sum()) >= 0.9 * chosen.sum()


def test_cell_points_and_border_reads_agree_with_upsampling():
    coarse = torch.randn(3, 1, 7, 7)
    idx = torch.arange(14 * 14).expand(3, -1)
    points = grid_cell_points(idx, 14)
    assert torch.allclose(points[0, 15], torch.tensor([1.5 / 14, 1.5 / 14]))
    sampled = sample_in_rois(coarse, points)[..., 0]
    torch.testing.assert_close(sampled, upsample2(coarse).flatten(1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_image_points_read_where_roi_align_reads(batch):
    """At cell centres, one bilinear sample per cell: RoIAlign(aligned=True, sampling_ratio=1)
    reads exactly the same values, in every image of a batch and at every FPN scale."""
    features, boxes, _, shapes = head_inputs(n_boxes=5, channels=6, batch=batch)
    rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    side = 9
    points = grid_cell_points(torch.arange(side * side).expand(rois.shape[0], -1), side)
    for _name, feature in features.items():
        scale = feature.shape[-1] / SIZE
        ref = roi_align(feature, rois, (side, side), spatial_scale=scale, sampling_ratio=1, aligned=True)
        got = sample_in_image(feature, rois, points, shapes)
        torch.testing.assert_close(got, ref.flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_importance_points_prefer_the_uncertain_band():
    torch.manual_seed(0)
    coarse = torch.full((2, 1, 28, 28), -8.0)
    coarse[:, :, 9:11, :] = 0.0  # the one uncertain band: rows 9-10 of 28, and the ramps beside them
    points = importance_points(coarse, 200)
    v = points[..., 1] * 28
    in_band = ((v > 8.5) & (v < 11.5)).float().mean()
    # 3/28 = 11 % of the RoI; 600 candidates put ~64 there, all taken, + 11 % of the 136 others
    assert points.shape == (2, 200, 2) and float(in_band) > 0.25


# --------------------------------------------------------------------- targets at the points
def test_point_targets_are_the_original_masks_values_at_those_coordinates():
    g = np.random.default_rng(0)
    h, w = 50, 70
    masks = torch.from_numpy((g.random((3, h, w)) > 0.5).astype(np.uint8))
    boxes_in_mask = torch.tensor([[3.2, 4.7, 60.1, 40.3], [0.0, 0.0, 70.0, 50.0], [-5.0, 10.5, 30.25, 60.0]])
    image_shape = (100, 140)  # the network input is 2x the masks: boxes are given in its pixels
    rois = boxes_in_mask * 2.0
    points = torch.from_numpy(g.random((3, 40, 2))).float()
    values, edges = point_targets([masks], [rois], [torch.tensor([0, 1, 2])], points, 56, [image_shape])
    b = boxes_in_mask.numpy().astype(np.float64)
    m = masks.numpy()
    for i in range(3):
        for p in range(40):
            u, v = points[i, p].tolist()
            x = b[i, 0] + u * (b[i, 2] - b[i, 0])
            y = b[i, 1] + v * (b[i, 3] - b[i, 1])
            col, row = int(np.floor(x)), int(np.floor(y))
            want = m[i, row, col] if 0 <= col < w and 0 <= row < h else 0
            assert values[i, p].item() == want, (i, p, x, y)
    assert set(edges.unique().tolist()) <= {0.0, 1.0}


def test_edge_targets_mark_points_within_one_cell_of_the_outline():
    masks = torch.zeros(1, 100, 100, dtype=torch.uint8)
    masks[0, :, :50] = 1  # outline at x = 50
    rois = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    u = torch.tensor([0.2, 0.495, 0.505, 0.8, 0.5 - 1.5 / 56])
    points = torch.stack([u, torch.full_like(u, 0.5)], -1)[None]
    values, edges = point_targets([masks], [rois], [torch.tensor([0])], points, 56)
    assert values[0].tolist() == [1, 1, 0, 0, 1]
    assert edges[0].tolist() == [0, 1, 1, 0, 0]


# ------------------------------------------------------------------------------------ FLOPs
@pytest.mark.parametrize("policy", ["fixed-14", "fixed-28", "fixed-56", "fixed-112", "dynamic"])
def test_flops_equal_the_counter_with_the_grid_sample_formula(policy):
    torch.manual_seed(0)
    head = DynaMaskHead(
        3,
        policy="dynamic",
        in_channels=32,
        widths=(32, 24, 16, 12),
        reduced_channels=(8, 8, 4),
        fam="conv",
        refinement="points",
        refinement_points=150,
        budget_target=0.9,
    ).eval()
    head.policy = policy
    features, boxes, labels, shapes = head_inputs(n_boxes=10)
    flops, out = count_flops(head.forward_infer, features, boxes, labels, shapes)
    reported = float(out[0]["mask_flops"].sum())
    assert reported == pytest.approx(flops, rel=1e-6)  # mask_flops are float32
    if policy != "dynamic":
        k = RESOLUTIONS.index(int(policy.split("-")[1]))
        assert flops == head.flops_table()["cumulative"][k] * 10


def test_point_stages_cost_a_fraction_of_dense_ones_and_grow_with_points():
    kw = dict(in_channels=128, widths=(64, 43, 32, 21), reduced_channels=(16, 16, 8), fam="conv", policy="fixed-112")
    dense = DynaMaskHead(2, refinement="dense", **kw).flops_table()["cumulative"]
    sparse = {
        n: DynaMaskHead(2, refinement="points", refinement_points=n, **kw).flops_table()["cumulative"]
        for n in (196, 784, 20000)
    }
    assert sparse[196][:2] == dense[:2]  # 14 and 28 are the dense stages
    assert sparse[196][3] < sparse[784][3] < sparse[20000][3] < 0.6 * dense[3]
    head = DynaMaskHead(2, refinement="points", refinement_points=20000, **kw)
    assert head.stage_points(2) == 56 * 56 and head.stage_points(3) == 112 * 112


# ------------------------------------------------------------------------- the option itself
def test_points_head_has_point_stages_instead_of_dense_fine_stages():
    head = DynaMaskHead(
        3,
        policy="dynamic",
        in_channels=32,
        widths=(32, 24, 16, 12),
        reduced_channels=(8, 8, 4),
        refinement="points",
        budget_target=0.9,
    )
    assert len(head.predictors) == 2 and len(head.aggregators) == 1 and len(head.point_stages) == 2
    assert not any(k.startswith(("predictors.2", "aggregators.1")) for k in head.state_dict())
    h56 = DynaMaskHead(3, policy="fixed-56", in_channels=32, refinement="points")
    assert len(h56.point_stages) == 1
    dense = DynaMaskHead(3, policy="dynamic", in_channels=32, refinement="dense")
    assert len(dense.point_stages) == 0 and len(dense.predictors) == 4
    with pytest.raises(ValueError, match="refinement_points"):
        head.refinement_points = 0


def test_paper_switch_with_points_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="switch 'paper' cannot be used with refinement 'points'"):
        DynaMaskHead(3, policy="dynamic", in_channels=32, switch="paper", refinement="points")
    with pytest.raises(DynaMaskError, match="model.switch.*model.refinement"):
        load_config(None, {"model.switch": "paper", "model.refinement": "points"})
    load_config(None, {"model.switch": "paper", "model.refinement": "points", "model.policy": "fixed-112"})
    with pytest.raises(DynaMaskError, match="mask_geometry"):
        load_config(None, {"model.mask_geometry": "torchvision", "model.refinement": "points"})


def test_training_step_supervises_every_stage_and_the_switch():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(
        3, fam="conv", refinement="points", refinement_points=64, mask_budget_target=0.9, **SMALL
    ).train()
    from test_model import make_batch

    images, targets = make_batch()
    losses = m(images, targets)
    assert {f"loss_mask_{r}" for r in RESOLUTIONS} | {"loss_mask_edge", "loss_mask_switch"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head = m.mask_branch
    for stage in head.point_stages:
        assert float(stage.fc1.weight.grad.abs().sum()) > 0 and float(stage.reduce.weight.grad.abs().sum()) > 0
    assert sum(float(p.grad.abs().sum()) for p in head.switch.parameters() if p.grad is not None) > 0


def test_training_supervises_the_train_points_and_refines_with_the_inference_points(monkeypatch):
    """PointRend's split: ``refinement_train_points`` importance-sampled points are supervised; the
    inference-style pass (the next stage's input, the switch's costs) refines ``refinement_points``."""
    import dynamask.models.point_stages as stages_module

    sampled, refined = [], []
    real_sample, real_refine = stages_module.importance_points, stages_module.refine_at_points
    monkeypatch.setattr(
        stages_module, "importance_points", lambda coarse, count: sampled.append(count) or real_sample(coarse, count)
    )
    monkeypatch.setattr(
        stages_module,
        "refine_at_points",
        lambda stage, coarse, count, *a, **k: refined.append(count) or real_refine(stage, coarse, count, *a, **k),
    )
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(
        3, fam="conv", refinement_points=100, refinement_train_points=40, mask_budget_target=0.9, **SMALL
    ).train()
    from test_model import make_batch

    images, targets = make_batch()
    m(images, targets)
    assert m.mask_branch.refinement == "points"  # the default
    assert sampled == [40, 40] and refined == [100, 100]


def test_points_are_the_default_for_new_models_and_configs():
    from dynamask.config import schema
    from dynamask.models import point_refine

    cfg = load_config(None, {})
    assert cfg["model"]["refinement"] == "points"
    assert (cfg["model"]["refinement_points"], cfg["model"]["refinement_train_points"]) == (
        point_refine.INFERENCE_POINTS,
        point_refine.TRAINING_POINTS,
    )
    assert (schema.INFERENCE_POINTS, schema.TRAINING_POINTS) == (
        point_refine.INFERENCE_POINTS,
        point_refine.TRAINING_POINTS,
    )
    head = DynaMaskHead(3, in_channels=32)
    assert head.refinement == "points" and head.refinement_points == point_refine.INFERENCE_POINTS
    assert len(head.point_stages) == 2 and len(head.aggregators) == 1
    with pytest.raises(ValueError, match="refinement_train_points"):
        DynaMaskHead(3, in_channels=32, refinement_train_points=0)
    # the paper's configuration names dense stages, which its switch needs
    paper = load_config(str(ROOT / "configs" / "coco_dynamask_r50_1x_paper.yaml"), {})
    assert paper["model"]["refinement"] == "dense"


def _checkpoint(model, cfg, path, drop_refinement=False):
    cfg = {s: dict(v) if isinstance(v, dict) else v for s, v in cfg.items()}
    if drop_refinement:
        cfg["model"].pop("refinement")
        cfg["model"].pop("refinement_points")
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ["a", "b"],
            "cat_ids": [1, 2],
            "num_classes": 3,
            "iteration": 0,
        },
        path,
    )


SETTINGS = {
    "model.backbone": "resnet18",
    "model.fam": "conv",
    "input.min_size": 64,
    "input.max_size": 64,
    "model.fpn_channels": 32,
    "model.box_representation_size": 64,
    "model.head_widths": [32, 24, 16, 12],
    "model.box_score_thresh": 0.0,
    "model.box_detections_per_img": 20,
    "model.mask_budget_target": 0.9,
}


def test_checkpoints_record_the_refinement_and_old_ones_read_dense(tmp_path, monkeypatch):
    from dynamask import inference

    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    for refinement in ("dense", "points"):
        cfg = load_config(None, {**SETTINGS, "model.refinement": refinement, "model.refinement_points": 100})
        torch.manual_seed(0)
        model = build_model(cfg, 3).eval()
        path = tmp_path / f"{refinement}.pt"
        _checkpoint(model, cfg, path)
        loaded, _ = inference.model_from_checkpoint(str(path))
        assert loaded.mask_branch.refinement == refinement and loaded.mask_branch.refinement_points == 100
        with torch.no_grad():
            a, b = model([image])[0], loaded.eval()([image])[0]
        torch.testing.assert_close(a["masks"], b["masks"])
    # a checkpoint from before the key is dense, whatever today's default says
    cfg = load_config(None, {**SETTINGS, "model.refinement": "dense"})
    torch.manual_seed(0)
    old = build_model(cfg, 3).eval()
    _checkpoint(old, cfg, tmp_path / "old.pt", drop_refinement=True)
    monkeypatch.setattr(inference, "with_defaults", _defaults_with_points(inference.with_defaults))
    loaded, _ = inference.model_from_checkpoint(str(tmp_path / "old.pt"))
    assert loaded.mask_branch.refinement == "dense"
    with torch.no_grad():
        torch.testing.assert_close(old([image])[0]["masks"], loaded.eval()([image])[0]["masks"], rtol=0, atol=0)
    # like the mask geometry, the refinement is the checkpoint's whatever a config says (its weights
    # are point or dense stages): a config that never names it means the checkpoint's model
    as_dense = {**cfg, "model": {**cfg["model"], "refinement": "dense"}}
    assert inference.model_from_checkpoint(str(tmp_path / "points.pt"), as_dense)[0].mask_branch.refinement == "points"
    as_points = {**cfg, "model": {**cfg["model"], "refinement": "points"}}
    assert inference.model_from_checkpoint(str(tmp_path / "dense.pt"), as_points)[0].mask_branch.refinement == "dense"


def _defaults_with_points(with_defaults):
    """``with_defaults`` as it would be once ``points`` is the default refinement."""

    def patched(cfg):
        out = with_defaults(cfg)
        if "refinement" not in (cfg.get("model") or {}):
            out["model"]["refinement"] = "points"
        return out

    return patched


def _iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    inter = (pred & gt).sum().item()
    return inter / max((pred | gt).sum().item(), 1)


def test_a_small_overfit_reaches_the_dense_heads_iou():
    """Head only, on fixed random features: an outline with detail that 28×28 cannot hold. After
    the same steps the point head's 112 mask is as good as the dense head's (and better than its
    own 28 mask)."""
    size = 128
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angle = torch.atan2(yy - 64.0, xx - 64.0)
    radius = torch.sqrt((yy - 64.0) ** 2 + (xx - 64.0) ** 2)
    gt = (radius < 40 + 8 * torch.sin(9 * angle)).to(torch.uint8)  # a nine-armed star
    box = torch.tensor([[16.0, 16.0, 112.0, 112.0]])
    g = torch.Generator().manual_seed(0)
    features = {str(i): torch.randn(1, 16, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=g) for i in range(4)}
    results = {}
    for refinement in ("dense", "points"):
        torch.manual_seed(0)
        head = DynaMaskHead(
            2,
            policy="fixed-112",
            in_channels=16,
            widths=(16, 16, 16, 16),
            reduced_channels=(8, 8, 8),
            fam="conv",
            refinement=refinement,
            refinement_points=400,
        )
        opt = torch.optim.Adam(head.parameters(), lr=3e-3)
        for _ in range(150):
            losses = head.forward_train(
                features, [box], [(size, size)], [gt[None]], [torch.tensor([1])], [torch.tensor([0])]
            )
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
        head.eval()
        ious = {}
        for r in (28, 112):
            head.policy = f"fixed-{r}"
            with torch.no_grad():
                ((_, masks),) = head.forward_infer(features, [box], [torch.tensor([1])], [(size, size)])[0][
                    "mask_groups"
                ]
            pasted = paste_masks(masks, box, (size, size))[0, 0] >= 0.5
            ious[r] = _iou(pasted, gt.bool())
        results[refinement] = ious
    assert results["points"][112] >= results["dense"][112] - 0.01, results
    assert results["points"][112] > results["points"][28] + 0.01, results


def test_another_refinement_points_than_the_price_was_set_with_warns(tmp_path):
    from dynamask import inference
    from dynamask.predictor import Predictor

    cfg = load_config(None, {**SETTINGS, "model.refinement": "points", "model.refinement_points": 100})
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    path = tmp_path / "p.pt"
    _checkpoint(model, cfg, path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as trained: silent
        inference.model_from_checkpoint(str(path))
    more = {**cfg, "model": {**cfg["model"], "refinement_points": 400}}
    with pytest.warns(UserWarning, match="trained with model.refinement_points=100; with 400"):
        loaded, _ = inference.model_from_checkpoint(str(path), more)
    assert loaded.mask_branch.refinement_points == 400
    raw = torch.load(path, weights_only=True)
    raw["calibration"] = {"refinement_points": 400}
    raw["config"]["model"]["refinement_points"] = 400
    torch.save(raw, tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="calibrated with model.refinement_points=400; with 100"):
        inference.model_from_checkpoint(str(tmp_path / "c.pt"), cfg)
    # the Predictor serves a point head like any other
    out = Predictor(str(path), score_thresh=0.0, device="cpu").predict(torch.rand(3, 64, 64))
    assert out["masks"].shape[-2:] == (64, 64) and set(out["mask_resolution"].tolist()) <= set(RESOLUTIONS)


def test_calibrate_re_prices_a_point_head_for_other_refinement_points(tmp_path, capsys):
    import warnings

    from dynamask import inference
    from dynamask.cli import main
    from dynamask.data import generate_shapes_dataset

    cfg = load_config(
        None, {**SETTINGS, "model.refinement": "points", "model.refinement_points": 100, "model.box_score_thresh": 0.0}
    )
    torch.manual_seed(0)
    _checkpoint(build_model(cfg, 3).eval(), cfg, tmp_path / "p.pt")
    shapes = generate_shapes_dataset(tmp_path / "held", 0, 2, image_size=64, seed=1)
    out = tmp_path / "c.pt"
    args = [
        "calibrate",
        "--weights",
        str(tmp_path / "p.pt"),
        "--data-json",
        str(shapes["val_json"]),
        "--data-images",
        str(shapes["val_dir"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--target",
        "0.9",
    ]
    assert main(args + ["--refinement-points", "300"]) == 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["calibration"]["refinement_points"] == 300 and ckpt["config"]["model"]["refinement_points"] == 300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # runs as calibrated: no warning
        model, _ = inference.model_from_checkpoint(str(out))
    assert model.mask_branch.refinement_points == 300
    dense_cfg = load_config(None, {**SETTINGS, "model.refinement": "dense"})
    _checkpoint(build_model(dense_cfg, 3).eval(), dense_cfg, tmp_path / "d.pt")
    args[2] = str(tmp_path / "d.pt")
    args[8] = str(tmp_path / "d_out.pt")
    assert main(args + ["--refinement-points", "300"]) == 2
    assert "no point-refinement head" in capsys.readouterr().err


def test_a_mask_rcnn_checkpoint_that_predates_the_key_still_loads(tmp_path):
    """The refinement is a DynaMask head's: a Mask R-CNN head's checkpoint records none, and its
    config's default must not count as a mismatch."""
    from dynamask import inference

    cfg = load_config(None, {**SETTINGS, "model.head": "maskrcnn", "model.maskrcnn_head_channels": 8})
    torch.manual_seed(0)
    model = build_model(cfg, 3).eval()
    hp = inference.hyper_parameters(cfg, 3)
    hp.pop("refinement")
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "hyper_parameters": hp,
            "class_names": ["a", "b"],
            "num_classes": 3,
            "iteration": 0,
        },
        tmp_path / "m.pt",
    )
    loaded, _ = inference.model_from_checkpoint(str(tmp_path / "m.pt"))
    assert loaded.mask_branch.__class__.__name__ == "MaskRCNNBranch"


@pytest.mark.parametrize("batch", [1, 2])
def test_row_gather_reads_what_grid_sample_reads(batch):
    """The channels-last row gather (inference and training) and the exported ``grid_sample``
    path read the same values at arbitrary points, the map's borders included."""
    torch.manual_seed(0)
    features, boxes, _, shapes = head_inputs(n_boxes=4, channels=5, batch=batch)
    rois = torch.cat([torch.cat([torch.full((b.shape[0], 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    points = torch.rand(rois.shape[0], 60, 2)
    points[:, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # the box corners
    for feature in features.values():
        got = sample_in_image(feature, rois, points, shapes)
        scale = level_scale(feature, shapes)
        size = torch.tensor([feature.shape[-1], feature.shape[-2]], dtype=feature.dtype)
        xy = rois[:, None, 1:3] + points * (rois[:, None, 3:] - rois[:, None, 1:3])
        grid = (2.0 * xy * scale / size - 1.0)[:, :, None, :]
        ref = torch.stack(
            [
                F.grid_sample(
                    feature[int(b) : int(b) + 1], g[None], mode="bilinear", padding_mode="border", align_corners=False
                )[0, :, :, 0].t()
                for b, g in zip(rois[:, 0], grid)
            ]
        )
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)  # coordinates rounded differently
    maps = torch.randn(points.shape[0], 3, 14, 14)
    ref = F.grid_sample(
        maps, (2 * points - 1)[:, :, None], mode="bilinear", padding_mode="border", align_corners=False
    )[..., 0].transpose(1, 2)
    torch.testing.assert_close(sample_in_rois(maps, points), ref, atol=1e-6, rtol=1e-6)
