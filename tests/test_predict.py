"""Predictor input handling, predict_files outputs, overlay / gallery / plot helpers."""

from __future__ import annotations

import json
import logging
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dynamask.config import load_config
from dynamask.data import CocoInstanceDataset, generate_shapes_dataset, load_image
from dynamask.engine.predict import find_images, predict_files
from dynamask.errors import DynaMaskError
from dynamask.models import build_model
from dynamask.predictor import Predictor, image_to_tensor
from dynamask.visualize import RESOLUTION_COLORS, draw_overlay, plot_ap_vs_flops, save_gallery

KEYS = {"boxes", "labels", "scores", "masks", "mask_resolution", "mask_flops"}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes_pred"), 1, 4, image_size=64)


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory):
    cfg = load_config(
        None,
        {
            "model.backbone": "resnet18",
            "model.fam": "conv",
            "input.min_size": 64,
            "input.max_size": 64,
            "model.box_score_thresh": 0.0,
            "model.rpn_pre_nms_top_n_test": 100,
            "model.rpn_post_nms_top_n_test": 40,
            "model.box_detections_per_img": 6,
        },
    )
    ds = CocoInstanceDataset(shapes["val_json"], shapes["val_dir"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes + 1)
    path = tmp_path_factory.mktemp("ckpt_pred") / "model.pt"
    torch.save(
        {
            "model": model.state_dict(),
            "config": cfg,
            "class_names": ds.class_names,
            "cat_ids": ds.cat_ids,
            "num_classes": ds.num_classes + 1,
            "iteration": 0,
        },
        path,
    )
    return str(path)


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor(checkpoint, device="cpu", score_thresh=0.0)


def _first_image(shapes):
    import os

    return os.path.join(shapes["val_dir"], sorted(os.listdir(shapes["val_dir"]))[0])


def _same(a, b):
    assert set(a) == set(b) == KEYS
    assert a["boxes"].shape[0] == b["boxes"].shape[0]
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
    assert torch.equal(a["labels"], b["labels"])
    assert torch.equal(a["mask_resolution"], b["mask_resolution"])


# ---------------------------------------------------------------- Predictor
def test_predictor_inputs_are_consistent(predictor, shapes):
    path = _first_image(shapes)
    by_path = predictor.predict(path)
    assert by_path["boxes"].shape[0] > 0
    n = by_path["boxes"].shape[0]
    assert by_path["masks"].shape == (n, 1, 64, 64) and by_path["masks"].dtype == torch.float32
    assert by_path["boxes"].device.type == "cpu"
    assert bool((by_path["scores"][:-1] >= by_path["scores"][1:]).all())
    assert set(by_path["mask_resolution"].tolist()) <= set(RESOLUTION_COLORS)

    pil = Image.open(path).convert("RGB")
    rgb = np.asarray(pil)
    _same(by_path, predictor.predict(pil))
    _same(by_path, predictor.predict(rgb))
    _same(by_path, predictor.predict(rgb.astype(np.float32) / 255.0))
    _same(by_path, predictor.predict(torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()))  # uint8 CHW
    _same(by_path, predictor.predict(load_image(path)))  # float CHW
    _same(by_path, predictor.predict(str(path)))

    gray = np.asarray(pil.convert("L"))
    g_np = predictor.predict(gray)
    _same(g_np, predictor.predict(Image.fromarray(gray)))
    _same(g_np, predictor.predict(torch.from_numpy(gray.copy())))
    _same(g_np, predictor.predict(np.stack([gray] * 3, axis=2)))

    batch = predictor.predict_batch([path, rgb, gray])
    assert len(batch) == 3
    _same(batch[0], by_path)
    _same(batch[2], g_np)
    assert predictor.class_names[0] == "ellipse" and len(predictor.class_names) == 8


def test_predictor_threshold_policy_and_errors(checkpoint, shapes, tmp_path):
    path = _first_image(shapes)
    strict = Predictor(checkpoint, device="cpu", score_thresh=1.0)
    assert strict.predict(path)["boxes"].shape == (0, 4)
    fixed = Predictor(checkpoint, device="cpu", score_thresh=0.0, policy="fixed-56", mask_budget=0.5)
    out = fixed.predict(path)
    assert fixed.policy == "fixed-56" and fixed.mask_budget == 0.5
    assert set(out["mask_resolution"].tolist()) == {56}
    with pytest.raises(DynaMaskError, match="policy"):
        Predictor(checkpoint, device="cpu", policy="fixed-99")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DynaMaskError, match="broken.png"):
        strict.predict(bad)
    with pytest.raises(DynaMaskError, match="missing.png"):
        strict.predict(tmp_path / "missing.png")
    with pytest.raises(DynaMaskError):
        image_to_tensor(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DynaMaskError):
        image_to_tensor(torch.full((3, 4, 4), 200.0))  # float outside [0, 1]
    with pytest.raises(DynaMaskError):
        image_to_tensor(12)


# ---------------------------------------------------------------- predict_files
def test_predict_files_folder(checkpoint, shapes, tmp_path, caplog, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    images = sorted((p for p in __import__("pathlib").Path(shapes["val_dir"]).iterdir()), key=str)
    for p in images[:2]:
        shutil.copy(p, src / p.name)
    shutil.copy(images[0], src / "sub" / images[0].name)  # same stem as a top-level file
    Image.open(images[1]).save(src / "sub" / "photo.JPG")
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (src / "notes.txt").write_text("not an image")

    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="dynamask.predict"):
        json_path = predict_files(checkpoint, [src], out, score_thresh=0.0, device="cpu", progress=True)
    assert json_path == str(out / "predictions.json")
    err = capsys.readouterr().err  # not a terminal: plain progress lines (5 files), then the summary
    lines = [line for line in err.splitlines() if line.startswith("predict: ")]
    assert "\r" not in err and 1 <= len(lines) <= 5 and lines[-1].startswith("predict: 5/5 img (100 %)"), err
    assert "predicted 4 image(s)" in err
    overlays = sorted(p.name for p in out.glob("*_overlay.png"))
    assert len(overlays) == 4  # 2 top-level + 2 in sub; corrupt skipped, txt ignored
    assert len(set(overlays)) == 4 and f"{images[0].stem}-2_overlay.png" in overlays
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("corrupt.png" in w for w in warnings)
    assert any("skipped 1 unreadable" in r.getMessage() for r in caplog.records)

    preds = json.loads((out / "predictions.json").read_text())
    assert preds, "the untrained model with score_thresh 0 should produce detections"
    files = {p["file_name"] for p in preds}
    assert all(not f.endswith("corrupt.png") for f in files)
    p = preds[0]
    assert {
        "file_name",
        "image_id",
        "category_id",
        "bbox",
        "score",
        "segmentation",
        "mask_resolution",
        "mask_flops",
    } <= set(p)
    assert isinstance(p["segmentation"]["counts"], str)

    # the overlay differs from the input exactly where things are drawn (masks)
    overlay = cv2.cvtColor(cv2.imread(str(out / f"{images[0].stem}_overlay.png")), cv2.COLOR_BGR2RGB)
    assert overlay.shape[0] >= 64 and overlay.shape[0] % 64 == 0
    scale = overlay.shape[0] // 64
    orig = np.asarray(Image.open(images[0]).convert("RGB"))
    small = overlay[::scale, ::scale]
    assert small.shape == orig.shape and not np.array_equal(small, orig)

    # running again with the output folder inside the input folder does not pick up overlays
    inner = src / "results"
    predict_files(checkpoint, src, inner, score_thresh=0.0, device="cpu", progress=False)
    predict_files(checkpoint, src, inner, score_thresh=0.0, device="cpu", progress=False)
    assert len(list(inner.glob("*_overlay.png"))) == 4


def test_predict_files_no_inputs(checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DynaMaskError, match="no images"):
        predict_files(checkpoint, [empty], tmp_path / "out", progress=False)
    with pytest.raises(DynaMaskError, match="nowhere"):
        predict_files(checkpoint, [tmp_path / "nowhere"], tmp_path / "out", progress=False)
    assert find_images([empty]) == []


# ---------------------------------------------------------------- visualize
def test_draw_overlay_marks_masks():
    img = np.full((80, 80, 3), 128, np.uint8)
    mask = torch.zeros(2, 1, 80, 80)
    mask[0, 0, 40:70, 40:70] = 0.9
    mask[1, 0, 5:15, 60:75] = 0.9
    pred = {
        "boxes": torch.tensor([[40.0, 40.0, 70.0, 70.0], [60.0, 5.0, 75.0, 15.0]]),
        "labels": torch.tensor([1, 2]),
        "scores": torch.tensor([0.9, 0.1]),
        "masks": mask,
        "mask_resolution": torch.tensor([112, 14]),
        "mask_flops": torch.tensor([1e8, 1e7]),
    }
    out = draw_overlay(img, pred, ["a", "b"], score_thresh=0.5, legend=False)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out[50:65, 50:65], img[50:65, 50:65])  # inside the drawn mask
    assert np.array_equal(out[75:, :30], img[75:, :30])  # far away: untouched
    assert np.array_equal(out[7:13, 62:73], img[7:13, 62:73])  # below score_thresh: not drawn
    # the outline uses the resolution colour (112 → blue)
    blue = np.array(RESOLUTION_COLORS[112])
    assert (np.abs(out.astype(int) - blue).sum(axis=2) < 30).any()
    big = draw_overlay(img, pred, ["a", "b"], score_thresh=0.5, min_display_size=300)
    assert big.shape == (320, 320, 3)


def test_gallery_and_plot(tmp_path):
    tiles = [np.full((40, 50, 3), v, np.uint8) for v in (0, 80, 160)] + [np.zeros((30, 30, 3), np.uint8)]
    path = save_gallery(tiles, tmp_path / "g.png", cols=2)
    g = cv2.imread(path)
    assert g.shape[0] == 2 * 40 + 3 * 4 and g.shape[1] == 2 * 50 + 3 * 4
    points = [
        {"name": "fixed-28", "gflops": 0.5, "segm_AP": 30.0, "boundary_AP": 20.0},
        {"name": "dynamic", "gflops": 0.3, "segm_AP": 32.0, "boundary_AP": 23.5},
        {"name": "no-boundary", "gflops": 0.2, "segm_AP": 25.0, "boundary_AP": None},
    ]
    out = plot_ap_vs_flops(points, tmp_path / "plots" / "ap_vs_flops.png")
    im = cv2.imread(out)
    assert im is not None and im.shape[0] > 100
    assert not list((tmp_path / "plots").glob(".*"))  # no temp files left
