"""Photos with an EXIF orientation tag: training/evaluation data follow the json width/height,
prediction always shows photos upright."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dynamask.config import load_config
from dynamask.data import CocoInstanceDataset, generate_shapes_dataset, load_image
from dynamask.data.coco import DatasetError
from dynamask.engine.evaluate import evaluate
from dynamask.engine.predict import predict_files
from dynamask.models import build_model
from dynamask.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

STORED_W, STORED_H = 40, 30  # stored pixel grid; orientation 6 (rotate 90°) shows it 30 wide, 40 tall


def _photo(path, w=STORED_W, h=STORED_H, orientation=6, seed=0):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def _upright_pixels(path):
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def _stored_pixels(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _coco(tmp_path, images, name="ann.json"):
    """images: [(file_name, json_width, json_height)]; one 10x10 box/polygon per image near the origin."""
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for i, (fn, w, h) in enumerate(images, start=1):
        data["images"].append({"id": i, "file_name": fn, "width": w, "height": h})
        data["annotations"].append(
            {
                "id": i,
                "image_id": i,
                "category_id": 1,
                "iscrowd": 0,
                "area": 100.0,
                "bbox": [2, 3, 10, 10],
                "segmentation": [[2, 3, 12, 3, 12, 13, 2, 13]],
            }
        )
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _as_hwc(image):
    return (torch.as_tensor(image).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


# ---------------------------------------------------------------- dataset
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_json_with_upright_size_loads_upright_and_logs_once(tmp_path, caplog, ext):
    for k in range(3):
        _photo(tmp_path / f"p{k}.{ext}", seed=k)
    ann = _coco(tmp_path, [(f"p{k}.{ext}", STORED_H, STORED_W) for k in range(3)])
    ds = CocoInstanceDataset(ann, tmp_path)
    assert ds.skip_counts["outside_image"] == 0
    with caplog.at_level(logging.INFO, logger="dynamask.data"):
        for k in range(3):
            image, target = ds[k]
            assert tuple(image.shape) == (3, STORED_W, STORED_H)  # upright: 40 tall, 30 wide
            assert tuple(target["masks"].shape) == (1, STORED_W, STORED_H)
            np.testing.assert_array_equal(_as_hwc(image), _upright_pixels(tmp_path / f"p{k}.{ext}"))
    lines = [r for r in caplog.records if "EXIF" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert "p0." in lines[0].getMessage()
    assert ds.exif_rotated_ids == {1, 2, 3}


def test_check_image_sizes_counts_upright_images_and_logs_once(tmp_path, caplog):
    for k in range(3):
        _photo(tmp_path / f"p{k}.png", seed=k)
    _photo(tmp_path / "plain.png", orientation=1)
    ann = _coco(tmp_path, [(f"p{k}.png", STORED_H, STORED_W) for k in range(3)] + [("plain.png", STORED_W, STORED_H)])
    ds = CocoInstanceDataset(ann, tmp_path)
    with caplog.at_level(logging.INFO, logger="dynamask.data"):
        assert ds.check_image_sizes() == 3
        for k in range(4):
            ds[k]
    lines = [r.getMessage() for r in caplog.records if "EXIF" in r.getMessage()]
    assert len(lines) == 1 and "3 image(s)" in lines[0], lines


@pytest.mark.parametrize("orientation", [6, 3, 1])
def test_json_with_stored_size_keeps_the_stored_grid(tmp_path, caplog, orientation):
    path = _photo(tmp_path / "p.png", orientation=orientation)
    ann = _coco(tmp_path, [("p.png", STORED_W, STORED_H)])
    ds = CocoInstanceDataset(ann, tmp_path)
    with caplog.at_level(logging.INFO, logger="dynamask.data"):
        image, target = ds[0]
    assert tuple(image.shape) == (3, STORED_H, STORED_W)
    np.testing.assert_array_equal(_as_hwc(image), _stored_pixels(path))
    assert not [r for r in caplog.records if "EXIF" in r.getMessage()]
    assert ds.exif_rotated_ids == set()


def test_square_photo_keeps_the_stored_grid(tmp_path):
    path = _photo(tmp_path / "sq.png", w=32, h=32, orientation=6)
    ds = CocoInstanceDataset(_coco(tmp_path, [("sq.png", 32, 32)]), tmp_path)
    image, _ = ds[0]
    np.testing.assert_array_equal(_as_hwc(image), _stored_pixels(path))
    assert not np.array_equal(_stored_pixels(path), _upright_pixels(path))  # the tag would have turned it


def test_neither_size_is_a_named_error_mentioning_exif(tmp_path):
    _photo(tmp_path / "p.jpg")
    ds = CocoInstanceDataset(_coco(tmp_path, [("p.jpg", 64, 48)]), tmp_path)
    for call in (lambda: ds[0], ds.check_image_sizes):
        with pytest.raises(DatasetError) as info:
            call()
        msg = str(info.value)
        assert "p.jpg" in msg and "'width'/'height'" in msg and "EXIF" in msg, msg
        assert f"is {STORED_W}x{STORED_H} pixels ({STORED_H}x{STORED_W} upright per its EXIF orientation)" in msg
        assert "say 64x48" in msg


def test_no_exif_mismatch_error_is_unchanged(tmp_path):
    _photo(tmp_path / "p.png", orientation=1)
    ds = CocoInstanceDataset(_coco(tmp_path, [("p.png", STORED_H, STORED_W)]), tmp_path)
    with pytest.raises(DatasetError, match=r"is 40x30 pixels but its json fields 'width'/'height' say 30x40"):
        ds[0]


def test_load_image_is_stored_grid_unless_asked(tmp_path):
    path = _photo(tmp_path / "p.png")
    assert tuple(load_image(path).shape) == (3, STORED_H, STORED_W)
    up = load_image(path, exif_transpose=True)
    assert tuple(up.shape) == (3, STORED_W, STORED_H)
    np.testing.assert_array_equal(_as_hwc(up), _upright_pixels(path))


# ---------------------------------------------------------------- predict / evaluate
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("shapes_exif"), 1, 2, image_size=(48, 64))


def _cfg(val_json=None, val_dir=None):
    over = {
        "model.backbone": "resnet18",
        "model.fam": "conv",
        "input.min_size": 64,
        "input.max_size": 64,
        "model.box_score_thresh": 0.0,
        "model.rpn_pre_nms_top_n_test": 100,
        "model.rpn_post_nms_top_n_test": 40,
        "model.box_detections_per_img": 6,
        "test.score_thresh": 0.0,
        "data.num_workers": 0,
    }
    if val_json:
        over.update({"data.val_json": val_json, "data.val_images": val_dir})
    return load_config(None, over)


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory):
    cfg = _cfg()
    ds = CocoInstanceDataset(shapes["val_json"], shapes["val_dir"])
    torch.manual_seed(0)
    model = build_model(cfg, ds.num_classes + 1)
    path = tmp_path_factory.mktemp("ckpt_exif") / "model.pt"
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


def test_predictor_shows_photos_upright(checkpoint, tmp_path):
    path = _photo(tmp_path / "phone.jpg")
    out = Predictor(checkpoint, device="cpu", score_thresh=0.0).predict(str(path))
    assert out["masks"].shape[0] > 0
    assert tuple(out["masks"].shape[-2:]) == (STORED_W, STORED_H)  # upright: 40 tall, 30 wide
    assert float(out["boxes"][:, 2].max()) <= STORED_H + 1e-3 and float(out["boxes"][:, 3].max()) <= STORED_W + 1e-3


def test_predict_files_upright_and_no_not_writable_warning(checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "phone.jpg")
    _photo(photos / "scan.png", orientation=8, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        json_path = predict_files(
            checkpoint, [str(photos)], str(tmp_path / "out"), score_thresh=0.0, device="cpu", progress=False
        )
    assert not [w for w in caught if "not writable" in str(w.message)], [str(w.message) for w in caught]
    for stem in ("phone", "scan"):
        with Image.open(tmp_path / "out" / f"{stem}_overlay.png") as im:
            w, h = im.size  # overlays of small images are enlarged; upright means portrait, 3:4
            assert w < h and w * STORED_W == h * STORED_H, im.size
    with open(json_path) as f:
        preds = json.load(f)
    assert preds and all(p["segmentation"]["size"] == [STORED_W, STORED_H] for p in preds)


def test_evaluate_swapped_width_height_is_a_named_error(checkpoint, shapes, tmp_path):
    with open(shapes["val_json"]) as f:
        data = json.load(f)
    for im in data["images"]:
        im["width"], im["height"] = im["height"], im["width"]
    bad = tmp_path / "swapped.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        evaluate(_cfg(str(bad), shapes["val_dir"]), weights=checkpoint, device="cpu", progress=False)
    msg = str(info.value)
    assert "is 64x48 pixels but its json fields 'width'/'height' say 48x64" in msg, msg
    assert data["images"][0]["file_name"] in msg and "swapped.json" in msg

    # checked up front: with only the last image mis-sized, the model never runs
    data["images"][0]["width"], data["images"][0]["height"] = data["images"][0]["height"], data["images"][0]["width"]
    last = tmp_path / "last_swapped.json"
    last.write_text(json.dumps(data))
    model = build_model(_cfg(), 4)
    ran = []
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 1, 48, 64),
    }
    model.forward = lambda images, *a, **k: ran.append(1) or [dict(empty) for _ in images]
    with pytest.raises(DatasetError, match=data["images"][-1]["file_name"] + ".*'width'/'height'"):
        evaluate(
            _cfg(str(last), shapes["val_dir"]),
            model=model,
            cat_ids=[1, 2, 3],
            device="cpu",
            progress=False,
            batch_size=1,
        )
    assert not ran


def test_evaluate_follows_the_exif_rule(checkpoint, tmp_path):
    for k in range(2):
        _photo(tmp_path / f"p{k}.png", seed=k)
    ok = _coco(tmp_path, [(f"p{k}.png", STORED_H, STORED_W) for k in range(2)], "upright.json")
    m = evaluate(_cfg(ok, str(tmp_path)), weights=checkpoint, device="cpu", progress=False)
    assert m["num_images"] == 2
    bad = _coco(tmp_path, [("p0.png", 64, 48)], "wrong.json")
    with pytest.raises(DatasetError, match=r"EXIF orientation.*'width'/'height' say 64x48"):
        evaluate(_cfg(bad, str(tmp_path)), weights=checkpoint, device="cpu", progress=False)


def test_image_conversion_gives_torch_writable_arrays(tmp_path):
    """torch warns "The given NumPy array is not writable" once per process, so check in a fresh one;
    a 1-pixel-high/wide image is where the decoded array used to reach torch without a copy."""
    for name, size in (("one.png", (1, 1)), ("row.png", (5, 1)), ("col.jpg", (1, 5)), ("photo.jpg", (8, 6))):
        _photo(tmp_path / name, w=size[0], h=size[1])
    code = (
        "import glob, sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "from PIL import Image\n"
        "from dynamask.data import load_image\n"
        "from dynamask.predictor import image_to_tensor\n"
        "for p in sorted(glob.glob(sys.argv[1] + '/*')):\n"
        "    image_to_tensor(p); load_image(p); image_to_tensor(Image.open(p))\n"
        "    for m in ('L', 'F', 'I;16', 'P'):\n"
        "        image_to_tensor(Image.open(p).convert(m) if m != 'I;16' else Image.new(m, (1, 1)))\n"
        "print('done')\n"
    )
    r = subprocess.run(
        [sys.executable, "-W", "always", "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert "not writable" not in r.stderr, r.stderr
