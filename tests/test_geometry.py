"""Mask geometry (models/geometry.py): a perfect mask survives the round trip target → paste in
the exact geometry at every resolution, the RoI features and targets line up cell for cell, the
legacy geometry is kept bit for bit, and checkpoints that record no geometry run in it."""

from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from dynamask.data.shapes import SHAPE_CATEGORIES, make_shapes_tensors
from dynamask.evaluation.round_trip import round_trip_iou
from dynamask.models import (
    MASK_GEOMETRIES,
    DynaMaskHead,
    MaskRoIPool,
    dynamask_resnet18_fpn,
    maskrcnn_resnet18_fpn,
    roi_mask_targets,
)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
RESOLUTIONS = (14, 28, 56, 112)


@pytest.fixture(scope="module")
def shapes_ground_truth():
    """Shapes masks of every category, boxes from ~8 to ~200 px (256-px images)."""
    _, targets = make_shapes_tensors(40, image_size=256, seed=3, min_size_frac=0.03, max_size_frac=0.8)
    labels = torch.cat([t["labels"] for t in targets])
    sides = torch.cat([(t["boxes"][:, 2:] - t["boxes"][:, :2]).max(dim=1).values for t in targets])
    assert set(labels.tolist()) == set(range(1, len(SHAPE_CATEGORIES) + 1))
    assert float(sides.min()) <= 12 and float(sides.max()) >= 180
    return targets


def mean_round_trip_iou(targets, resolution, geometry):
    """Mean over instances of the ground truth's IoU with itself cropped to its box at this
    resolution and pasted back (binarised at 0.5): the best any head can do."""
    return float(torch.cat([round_trip_iou(t["masks"], t["boxes"], resolution, geometry) for t in targets]).mean())


def test_exact_round_trip_is_near_perfect_and_finer_is_never_worse(shapes_ground_truth):
    ious = [mean_round_trip_iou(shapes_ground_truth, r, "exact") for r in RESOLUTIONS]
    assert ious[1] >= 0.97 and ious[3] >= 0.99, ious
    for coarse, fine in zip(ious, ious[1:]):
        assert fine >= coarse - 0.002, ious


def test_torchvision_round_trip_reproduces_the_legacy_loss(shapes_ground_truth):
    ious = [mean_round_trip_iou(shapes_ground_truth, r, "torchvision") for r in RESOLUTIONS]
    exact = [mean_round_trip_iou(shapes_ground_truth, r, "exact") for r in RESOLUTIONS]
    # the legacy geometry caps every head, and finer masks come out worse (measured: 0.89 / 0.90
    # / 0.90 / 0.89 on this set, 0.87 / 0.87 / 0.86 / 0.85 on the benchmark's 128-px val set)
    assert max(ious) < 0.92, ious
    assert ious[3] < ious[1], ious
    assert all(e > t + 0.05 for e, t in zip(exact[1:], ious[1:]))


def test_legacy_targets_are_mask_rcnn_targets_bit_for_bit(shapes_ground_truth):
    masks, boxes = shapes_ground_truth[0]["masks"], shapes_ground_truth[0]["boxes"]
    order = torch.tensor([1, 0, 1]) % len(boxes)
    legacy = roi_align(
        masks[order][:, None].float(),
        torch.cat([torch.arange(3.0)[:, None], boxes[order]], 1),
        (28, 28),
        spatial_scale=1.0,
        sampling_ratio=2,
        aligned=False,
    )[:, 0]
    ours = roi_mask_targets(masks, boxes[order], 28, geometry="torchvision", batch_index=order)
    assert torch.equal(ours, legacy)


def test_exact_targets_tile_the_box():
    mask = torch.zeros(1, 40, 40, dtype=torch.uint8)
    mask[0, 10:20, 10:30] = 1  # pixels 10..19 × 10..29
    box = torch.tensor([[10.0, 10.0, 30.0, 20.0]])  # exactly the object's pixel edges
    assert torch.equal(roi_mask_targets(mask, box, 10), torch.ones(1, 10, 10))  # cells of 2×1 px
    half = torch.tensor([[10.0, 5.0, 30.0, 15.0]])  # the top half of the box is background
    target = roi_mask_targets(mask, half, 10)[0]
    assert torch.allclose(target[:5], torch.zeros(5, 10)) and torch.allclose(target[5:], torch.ones(5, 10))
    with pytest.raises(ValueError, match="mask_geometry"):
        roi_mask_targets(mask, box, 14, geometry="aligned")


def _bright_pixel_features(size, channels, level_pixels):
    """FPN-like maps P2..P5 (strides 4..32) of a size×size image, zero but for one bright pixel
    per level at the given (row, col)."""
    features = {}
    for name, stride in zip("0123", (4, 8, 16, 32)):
        f = torch.zeros(1, channels, size // stride, size // stride)
        if name in level_pixels:
            r, c = level_pixels[name]
            f[0, :, r, c] = 1.0
        features[name] = f
    return features


def _peak(x):
    """(row, col) of the maximum of a 1×C×R×R or R×R map, and whether it is unique."""
    m = x.reshape(-1, x.shape[-2], x.shape[-1])[0]
    top = m.max()
    where = torch.nonzero(m == top)
    return tuple(where[0].tolist()), where.shape[0] == 1


@pytest.mark.parametrize("geometry", MASK_GEOMETRIES)
def test_features_and_targets_peak_in_the_same_cell(geometry):
    """A bright square — one pixel of an FPN level, the same square of the image in the ground
    truth — lands in the same RoI cell in the shared 14×14 RoI feature, in the FAM's pooled
    P4 / P3 / P2 features and in the target, at every level (exact geometry). The legacy geometry
    pools the shared feature half a cell away, so there its peak is not where the target's is."""
    size, channels = 320, 4
    head = DynaMaskHead(
        3,
        policy="fixed-112",
        in_channels=channels,
        widths=(8, 8, 8, 8),
        reduced_channels=(4, 4, 4),
        fam="conv",
        mask_geometry=geometry,
        refinement="dense",
    )
    shapes = [(size, size)]
    x0, y0 = 32, 48  # a multiple of every stride
    cell = (5, 9)  # (row, col) of the RoI cell the square is put in
    checks = []
    # the FAM's image-level input: P4 at 14, P3 at 28, P2 at 56; a box of 224 px makes one
    # RoI cell exactly one pixel of that level
    for stage, (level, stride) in enumerate((("2", 16), ("1", 8), ("0", 4))):
        r = (14, 28, 56)[stage]
        pixel = (y0 // stride + cell[0], x0 // stride + cell[1])
        features = _bright_pixel_features(size, channels, {level: pixel})
        box = torch.tensor([[x0, y0, x0 + r * stride, y0 + r * stride]], dtype=torch.float32)
        roi5 = torch.cat([torch.zeros(1, 1), box], 1)
        checks.append((f"FAM pool at {r}", head._pool_image_feature(features, stage, roi5, shapes), box, pixel, stride))
    # the shared 14×14 RoI feature: level by box size (224 px → P4, 112 → P3, 56 → P2)
    for level, stride in (("2", 16), ("1", 8), ("0", 4)):
        pixel = (y0 // stride + cell[0], x0 // stride + cell[1])
        features = _bright_pixel_features(size, channels, {level: pixel})
        box = torch.tensor([[x0, y0, x0 + 14 * stride, y0 + 14 * stride]], dtype=torch.float32)
        checks.append(
            (f"shared 14x14 from P{int(level) + 2}", head.roi_pool(features, [box], shapes), box, pixel, stride)
        )
    for name, pooled, box, pixel, stride in checks:
        gt = torch.zeros(1, size, size, dtype=torch.uint8)
        gt[0, pixel[0] * stride : (pixel[0] + 1) * stride, pixel[1] * stride : (pixel[1] + 1) * stride] = 1
        target = roi_mask_targets(gt, box, pooled.shape[-1], geometry=geometry)
        assert _peak(target) == (cell, True), name
        feature_peak = _peak(pooled)
        if geometry == "exact" or name.startswith("FAM"):  # the FAM always pooled aligned=True
            assert feature_peak == (cell, True), name
        else:
            assert feature_peak != (cell, True), name


def test_mask_roi_pool_matches_torchvision_bit_for_bit_in_legacy_geometry():
    g = torch.Generator().manual_seed(0)
    features = {name: torch.rand(2, 8, 200 // s, 160 // s, generator=g) for name, s in zip("0123", (4, 8, 16, 32))}
    shapes = [(200, 160), (190, 150)]
    boxes = []
    for _ in shapes:
        xy = torch.rand(30, 2, generator=g) * 120
        wh = 2 + torch.rand(30, 2, generator=g) * 150
        boxes.append(torch.cat([xy, xy + wh], 1))
    reference = MultiScaleRoIAlign(list("0123"), 14, 2)(features, boxes, shapes)
    assert torch.equal(MaskRoIPool(list("0123"), 14, 2, "torchvision")(features, boxes, shapes), reference)
    exact = MaskRoIPool(list("0123"), 14, 2, "exact")(features, boxes, shapes)
    assert exact.shape == reference.shape and not torch.equal(exact, reference)


@pytest.mark.parametrize("build", [dynamask_resnet18_fpn, maskrcnn_resnet18_fpn])
def test_model_geometry_switches_pooling_targets_and_paste_together(build):
    dense = {"refinement": "dense"} if build is dynamask_resnet18_fpn else {}  # point stages need "exact"
    model = build(3, min_size=64, max_size=64, **dense)
    assert model.mask_geometry == "exact"
    assert model.mask_branch.roi_pool.geometry == model.transform.mask_geometry == "exact"
    model.mask_geometry = "torchvision"
    assert model.mask_branch.mask_geometry == model.mask_branch.roi_pool.geometry == "torchvision"
    assert model.transform.mask_geometry == "torchvision"
    with pytest.raises(ValueError, match="mask_geometry"):
        model.mask_geometry = "half-pixel"
    assert build(3, mask_geometry="torchvision", **dense).mask_geometry == "torchvision"
    if dense:
        with pytest.raises(ValueError, match="refinement 'points'"):
            build(3, min_size=64, max_size=64).mask_geometry = "torchvision"


def test_training_targets_follow_the_geometry():
    """The same batch gives different mask losses in the two geometries (the targets move)."""
    from dynamask.models.losses import matched_mask_targets

    _, targets = make_shapes_tensors(1, image_size=96, seed=5)
    masks, boxes = targets[0]["masks"], targets[0]["boxes"]
    idx = torch.arange(len(boxes))
    exact = matched_mask_targets([masks], [boxes], [idx], 28, "exact")
    legacy = matched_mask_targets([masks], [boxes], [idx], 28, "torchvision")
    assert torch.equal(exact, roi_mask_targets(masks, boxes, 28))
    assert not torch.allclose(exact, legacy)


# --------------------------------------------------------------------------- checkpoints
#: a dense DynaMask head on the shipped detector (the demo's head until point stages became the
#: default; a point head cannot be told the legacy geometry)
DENSE_HEAD = ROOT / "benchmarks" / "results" / "accuracy_vs_cost_256_heads" / "dynamic@0.4.pt"


@pytest.fixture(scope="module")
def pre_geometry_checkpoint(tmp_path_factory):
    """A dense DynaMask head as a checkpoint written before the mask_geometry setting existed:
    neither its config nor its hyper-parameters name a geometry (whole model in one file)."""
    from dynamask.inference import load_checkpoint

    ckpt = load_checkpoint(str(DENSE_HEAD))
    ckpt["config"]["model"].pop("mask_geometry")
    ckpt["hyper_parameters"].pop("mask_geometry")
    for key in ("detector", "detector_only"):
        ckpt.pop(key, None)
    path = tmp_path_factory.mktemp("legacy") / "pre_geometry.pt"
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_without_geometry_predicts_in_the_legacy_geometry(pre_geometry_checkpoint):
    """Checkpoints from before the setting (the 128-px ones shipped until issue 13: their outputs
    matched the old code bit for bit, tests/data/legacy_outputs.json in git history) load in
    "torchvision": the same predictions as the same weights told "torchvision", not "exact"."""
    from dynamask.inference import checkpoint_geometry, load_checkpoint, model_from_checkpoint

    path = str(pre_geometry_checkpoint)
    assert checkpoint_geometry(load_checkpoint(path)) == "torchvision"
    legacy, _ = model_from_checkpoint(path)
    assert legacy.mask_geometry == "torchvision"
    exact, _ = model_from_checkpoint(str(DENSE_HEAD))
    assert exact.mask_geometry == "exact"
    told, _ = model_from_checkpoint(str(DENSE_HEAD))
    told.mask_geometry = "torchvision"
    images, _ = make_shapes_tensors(2, image_size=256, seed=11, detail=True)
    with torch.no_grad():
        a, b, c = (m.eval()(images) for m in (legacy, told, exact))
    assert sum(len(o["boxes"]) for o in a) > 0
    for x, y, z in zip(a, b, c, strict=True):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["masks"], y["masks"])
        assert torch.equal(x["boxes"], z["boxes"]) and not torch.equal(x["masks"], z["masks"])


def test_checkpoint_geometry_is_read_from_the_checkpoint_not_the_defaults():
    from dynamask.inference import checkpoint_geometry, hyper_parameters, with_defaults

    assert checkpoint_geometry({"model": {}, "config": {"model": {"policy": "dynamic"}}}) == "torchvision"
    assert with_defaults({"model": {}})["model"]["mask_geometry"] == "exact"  # the default for new models
    cfg = with_defaults({"model": {"mask_geometry": "exact"}})
    assert checkpoint_geometry({"hyper_parameters": hyper_parameters(cfg, 3)}) == "exact"
    assert checkpoint_geometry({"config": {"model": {"mask_geometry": "exact"}}}) == "exact"


def test_predictor_uses_the_checkpoints_geometry_whatever_the_config_default(pre_geometry_checkpoint, tmp_path):
    from dynamask.config import load_config, save_config
    from dynamask.predictor import Predictor

    ckpt = torch.load(pre_geometry_checkpoint, map_location="cpu", weights_only=True)
    config = tmp_path / "model.yaml"
    save_config(
        load_config(
            None,
            {
                f"model.{k}": v
                for k, v in ckpt["config"]["model"].items()
                if k not in ("detector_weights", "init_weights")
            },
        ),
        config,
    )
    assert load_config(config)["model"]["mask_geometry"] == "exact"  # the config says the default
    predictor = Predictor(pre_geometry_checkpoint, config=config)
    assert predictor.model.mask_geometry == "torchvision"


def test_config_key_is_checked_and_reaches_the_model():
    from dynamask.config import load_config
    from dynamask.errors import ConfigError
    from dynamask.models import build_model

    cfg = load_config(ROOT / "configs" / "shapes_maskrcnn_r18.yaml", {"model.mask_geometry": "torchvision"})
    assert build_model(cfg, 3).mask_geometry == "torchvision"
    with pytest.raises(ConfigError, match="model.mask_geometry"):
        load_config(ROOT / "configs" / "shapes_maskrcnn_r18.yaml", {"model.mask_geometry": "aligned"})


def test_a_checkpoint_with_an_unknown_geometry_is_refused_by_name(tmp_path):
    from dynamask.errors import DynaMaskError
    from dynamask.inference import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(str(ROOT / "checkpoints" / "shapes_detail_maskrcnn_c64.pt"))  # head + its detector
    for key in ("detector", "detector_only"):
        ckpt.pop(key, None)  # one whole-model file
    ckpt["config"]["model"]["mask_geometry"] = ckpt["hyper_parameters"]["mask_geometry"] = "half-pixel"
    path = tmp_path / "odd.pt"
    torch.save(ckpt, path)
    with pytest.raises(DynaMaskError, match=r"odd\.pt: the checkpoint's mask_geometry 'half-pixel'"):
        model_from_checkpoint(str(path))


def test_level_scale_survives_heavy_padding():
    """A 40×256 image pads to 64×256: P2 (stride 4) is 16×64. The height alone says 1/2."""
    from dynamask.models.roi_utils import level_scale

    p2 = torch.zeros(1, 8, 16, 64)
    assert level_scale(p2, [(40, 256)]) == 0.25
    assert level_scale(torch.zeros(1, 8, 50, 76), [(200, 300)]) == 0.25  # ordinary padding
    assert level_scale(torch.zeros(1, 8, 13, 19), [(200, 300)]) == 1 / 16
