"""Tests for the synthetic shapes dataset generator."""

import contextlib
import io
import json
import math
import time
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from dynamask.data import (
    SHAPE_CATEGORIES,
    complexity_of_mask,
    generate_shapes_dataset,
    make_shapes_tensors,
)

# pycocotools decode under NumPy 2 warns about __array__(copy=...); not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    summary = generate_shapes_dataset(out, num_train=60, num_val=8, image_size=128, seed=3)
    return out, summary


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_layout_and_summary(shapes_dir):
    out, summary = shapes_dir
    assert summary["num_images"] == {"train": 60, "val": 8}
    for split in ("train", "val"):
        data = _load(out / f"{split}.json")
        assert {"images", "annotations", "categories"} <= set(data)
        assert len(data["images"]) == summary["num_images"][split]
        assert len(data["annotations"]) == summary["num_annotations"][split]
        for img in data["images"]:
            assert (out / split / img["file_name"]).is_file()
            assert (img["width"], img["height"]) == (128, 128)
    cats = _load(out / "train.json")["categories"]
    assert [c["id"] for c in cats] == list(range(1, 9))
    assert {c["supercategory"] for c in cats} == {"easy", "hard"}
    assert [c["name"] for c in cats if c["supercategory"] == "easy"] == ["ellipse", "rectangle", "triangle"]


def test_deterministic_by_seed(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", 6, 2, seed=11)
    b = generate_shapes_dataset(tmp_path / "b", 6, 2, seed=11)
    c = generate_shapes_dataset(tmp_path / "c", 6, 2, seed=12)
    for split in ("train", "val"):
        ja = (tmp_path / "a" / f"{split}.json").read_bytes()
        assert ja == (tmp_path / "b" / f"{split}.json").read_bytes()
        assert ja != (tmp_path / "c" / f"{split}.json").read_bytes()
    assert (tmp_path / "a/train/000003.png").read_bytes() == (tmp_path / "b/train/000003.png").read_bytes()
    assert a["num_annotations"] == b["num_annotations"]
    assert c["num_images"] == {"train": 6, "val": 2}


def test_pycocotools_loads_and_annotations_are_consistent(shapes_dir):
    out, _ = shapes_dir
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(out / "train.json"))
    assert sorted(coco.getCatIds()) == list(range(1, 9))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) > 60
    per_image = defaultdict(list)
    for ann in anns:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["iscrowd"] == 0
        m = coco.annToMask(ann)
        assert m.shape == (128, 128)
        assert m.sum() > 0
        assert ann["area"] == float(m.sum())
        ys, xs = np.nonzero(m)
        expected = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        np.testing.assert_allclose(ann["bbox"], expected)
        assert ann["complexity"] == pytest.approx(complexity_of_mask(m), abs=1e-3)
        per_image[ann["image_id"]].append(m)
    # every image has 1..4 annotated objects
    assert set(per_image) == set(coco.getImgIds())
    assert all(1 <= len(v) <= 4 for v in per_image.values())


def test_visible_masks_do_not_overlap(shapes_dir):
    out, _ = shapes_dir
    data = _load(out / "train.json")
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    boxes_overlap = 0
    for anns in by_image.values():
        masks = np.stack([mask_utils.decode(dict(a["segmentation"])) for a in anns]).astype(np.int32)
        assert masks.sum(0).max() <= 1, "visible masks of one image overlap"
        for i in range(len(anns)):
            for j in range(i + 1, len(anns)):
                x1, y1, w1, h1 = anns[i]["bbox"]
                x2, y2, w2, h2 = anns[j]["bbox"]
                if min(x1 + w1, x2 + w2) > max(x1, x2) and min(y1 + h1, y2 + h2) > max(y1, y2):
                    boxes_overlap += 1
    # the sample really contains occluding / overlapping objects
    assert boxes_overlap > 0


def test_hard_shapes_are_more_complex(shapes_dir):
    out, _ = shapes_dir
    data = _load(out / "train.json")
    name = {c["id"]: c["name"] for c in data["categories"]}
    by_name = defaultdict(list)
    for ann in data["annotations"]:
        by_name[name[ann["category_id"]]].append(ann["complexity"])
    easy = by_name["ellipse"] + by_name["rectangle"]
    hard = by_name["star"] + by_name["gear"]
    assert len(easy) >= 5 and len(hard) >= 5
    assert np.mean(hard) > np.mean(easy) + 0.5
    assert set(by_name) == {c["name"] for c in SHAPE_CATEGORIES}


def test_object_sizes_span_range(shapes_dir):
    out, _ = shapes_dir
    data = _load(out / "train.json")
    sides = [max(a["bbox"][2], a["bbox"][3]) / 128 for a in data["annotations"]]
    assert min(sides) < 0.15
    assert max(sides) > 0.5


def test_complexity_of_mask():
    disc = np.zeros((200, 200), np.uint8)
    cv2.circle(disc, (100, 100), 60, 1, -1)
    assert complexity_of_mask(disc) == pytest.approx(1.0, abs=0.12)
    ring = disc.copy()
    cv2.circle(ring, (100, 100), 40, 0, -1)
    # (R + r) / (R - r) = 5 for an ideal annulus
    assert complexity_of_mask(ring) == pytest.approx(5.0, rel=0.15)
    square = np.zeros((100, 100), np.uint8)
    square[10:90, 10:90] = 1
    assert complexity_of_mask(square) == pytest.approx(4 / math.pi, rel=0.05)
    assert complexity_of_mask(np.zeros((10, 10), np.uint8)) == 0.0
    # a mask touching the image border is still measured as a closed outline
    full = np.ones((50, 50), np.uint8)
    assert complexity_of_mask(full) == pytest.approx(4 / math.pi, rel=0.1)


def test_make_shapes_tensors_matches_files(tmp_path):
    generate_shapes_dataset(tmp_path, 3, 0, image_size=96, seed=5)
    images, targets = make_shapes_tensors(3, 96, seed=5)
    data = _load(tmp_path / "train.json")
    assert len(images) == len(targets) == 3
    for i, (img, tgt) in enumerate(zip(images, targets)):
        assert img.dtype == torch.float32 and img.shape == (3, 96, 96)
        assert 0.0 <= img.min() and img.max() <= 1.0
        png = cv2.cvtColor(cv2.imread(str(tmp_path / f"train/{i:06d}.png")), cv2.COLOR_BGR2RGB)
        assert torch.equal((img * 255).round().to(torch.uint8), torch.from_numpy(png).permute(2, 0, 1))
        anns = [a for a in data["annotations"] if a["image_id"] == i + 1]
        assert tgt["boxes"].dtype == torch.float32 and tgt["labels"].dtype == torch.int64
        assert tgt["masks"].dtype == torch.uint8 and tgt["masks"].shape == (len(anns), 96, 96)
        assert tgt["labels"].tolist() == [a["category_id"] for a in anns]
        for k, a in enumerate(anns):
            assert torch.equal(tgt["masks"][k], torch.from_numpy(mask_utils.decode(dict(a["segmentation"]))))
            x, y, w, h = a["bbox"]
            assert tgt["boxes"][k].tolist() == [x, y, x + w, y + h]


def test_generation_is_fast(tmp_path):
    t0 = time.perf_counter()
    generate_shapes_dataset(tmp_path, 100, 0, image_size=128, seed=0)
    assert time.perf_counter() - t0 < 5.0
