"""Tests for the COCO dataset loader and the train/eval transforms."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors
from torchvision.ops import masks_to_boxes

from dynamask.data import (
    SKIP_REASONS,
    CocoInstanceDataset,
    DatasetError,
    build_transforms,
    collate_fn,
    generate_shapes_dataset,
    load_coco_json,
    load_image,
)
from dynamask.models.geometry import boxes_to_mask_frame

# pycocotools decode under NumPy 2 warns about __array__(copy=...); not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


H, W = 48, 64


def uncompressed_rle(mask):
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with 0s."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rect_mask(y0, y1, x0, x1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def save_rgb(path, h=H, w=W, seed=0):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


RLE_MASK = rect_mask(5, 15, 40, 50)  # uncompressed RLE annotation
CRLE_MASK = rect_mask(30, 40, 2, 8)  # compressed RLE annotation
CROWD_MASK = rect_mask(0, 4, 0, 64)


def compressed(mask):
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@pytest.fixture
def coco_files(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for name, seed in (("a.png", 0), ("b.png", 1), ("c.png", 2)):
        save_rgb(img_dir / name, seed=seed)
    square = [[10, 10, 30, 10, 30, 30, 10, 30]]
    anns = [
        # kept: polygon, uncompressed RLE, compressed RLE, partially outside (clipped)
        {
            "id": 1,
            "image_id": 1,
            "category_id": 7,
            "bbox": [10, 10, 20, 20],
            "area": 400.0,
            "segmentation": square,
            "iscrowd": 0,
        },
        {
            "id": 2,
            "image_id": 1,
            "category_id": 3,
            "bbox": [40, 5, 10, 10],
            "area": 100.0,
            "segmentation": uncompressed_rle(RLE_MASK),
            "iscrowd": 0,
        },
        {
            "id": 3,
            "image_id": 1,
            "category_id": 42,
            "bbox": [2, 30, 6, 10],
            "area": 60.0,
            "segmentation": compressed(CRLE_MASK),
        },
        {
            "id": 4,
            "image_id": 1,
            "category_id": 3,
            "bbox": [55, 40, 20, 20],
            "area": 400.0,
            "segmentation": [[55, 40, 75, 40, 75, 60, 55, 60]],
            "iscrowd": 0,
        },
        # crowd: excluded from targets, not counted as skipped
        {
            "id": 5,
            "image_id": 1,
            "category_id": 3,
            "bbox": [0, 0, 64, 4],
            "area": 256.0,
            "segmentation": uncompressed_rle(CROWD_MASK),
            "iscrowd": 1,
        },
        {
            "id": 6,
            "image_id": 3,
            "category_id": 7,
            "bbox": [0, 0, 64, 4],
            "area": 256.0,
            "segmentation": uncompressed_rle(CROWD_MASK),
            "iscrowd": 1,
        },
        # skipped
        {
            "id": 7,
            "image_id": 1,
            "category_id": 7,
            "bbox": [5, 5, 0.5, 10],
            "segmentation": [[5, 5, 5.5, 5, 5.5, 15, 5, 15]],
        },  # degenerate_box
        {
            "id": 8,
            "image_id": 1,
            "category_id": 7,
            "bbox": [0, 0, 5, 5],
            "segmentation": [[1, 2, 3, 4]],
        },  # empty (2 points)
        {"id": 9, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "segmentation": []},  # empty
        {
            "id": 10,
            "image_id": 1,
            "category_id": 7,
            "bbox": [20, 20, 2, 2],
            "segmentation": [[20.1, 20.1, 20.2, 20.1, 20.2, 20.2]],
        },  # rasterises empty
        {
            "id": 11,
            "image_id": 1,
            "category_id": 99,
            "bbox": [10, 10, 20, 20],
            "segmentation": square,
        },  # unknown_category
        {
            "id": 12,
            "image_id": 1,
            "category_id": 3,
            "bbox": [100, 100, 10, 10],
            "segmentation": [[100, 100, 110, 100, 110, 110, 100, 110]],
        },  # outside_image
        {
            "id": 13,
            "image_id": 999,
            "category_id": 3,
            "bbox": [10, 10, 20, 20],
            "segmentation": square,
        },  # unknown_image
        {"id": 14, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20]},  # missing_segmentation
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": W, "height": H},
            {"id": 2, "file_name": "b.png", "width": W, "height": H},  # no annotations
            {"id": 3, "file_name": "c.png", "width": W, "height": H},  # crowd only
        ],
        "annotations": anns,
        "categories": [
            {"id": 42, "name": "bird", "supercategory": "animal"},
            {"id": 3, "name": "cat", "supercategory": "animal"},
            {"id": 7, "name": "dog", "supercategory": "animal"},
        ],
    }
    return write_json(tmp_path / "ann.json", data), img_dir


EXPECTED_SKIPS = {
    "unknown_category": 1,
    "unknown_image": 1,
    "degenerate_box": 1,
    "outside_image": 1,
    "missing_segmentation": 1,
    "empty_segmentation": 3,
}


def test_skip_counts_and_logging(coco_files, caplog):
    ann_file, img_dir = coco_files
    with caplog.at_level(logging.WARNING, logger="dynamask.data"):
        ds = CocoInstanceDataset(ann_file, img_dir)
    assert ds.skip_counts == EXPECTED_SKIPS
    assert set(ds.skip_counts) == set(SKIP_REASONS)
    assert ds.num_crowd == 2
    records = [r for r in caplog.records if r.name == "dynamask.data"]
    assert len(records) == 1
    msg = records[0].getMessage()
    assert str(ann_file) in msg and "empty_segmentation=3" in msg and "degenerate_box=1" in msg


def test_label_mapping(coco_files):
    ds = CocoInstanceDataset(*coco_files)
    assert ds.cat_ids == [3, 7, 42]
    assert ds.class_names == ["cat", "dog", "bird"]
    assert ds.cat_id_to_label == {3: 1, 7: 2, 42: 3}
    assert [ds.label_to_cat_id(lbl) for lbl in (1, 2, 3)] == [3, 7, 42]
    assert ds.num_classes == 3
    with pytest.raises(KeyError):
        ds.label_to_cat_id(0)


def test_keep_empty(coco_files):
    assert len(CocoInstanceDataset(*coco_files, keep_empty=True)) == 3
    ds = CocoInstanceDataset(*coco_files, keep_empty=False)
    assert len(ds) == 1 and ds.ids == [1]
    assert ds.num_dropped_images == 2


def test_targets(coco_files):
    ann_file, img_dir = coco_files
    ds = CocoInstanceDataset(ann_file, img_dir)
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    expected_pixels = np.asarray(Image.open(img_dir / "a.png")).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(image.numpy(), expected_pixels, atol=1e-6)

    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and tuple(boxes.canvas_size) == (H, W)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[10, 10, 30, 30], [40, 5, 50, 15], [2, 30, 8, 40], [55, 40, 64, 48]]
    assert target["labels"].dtype == torch.int64
    assert target["labels"].tolist() == [2, 1, 3, 1]
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (4, H, W)
    assert torch.equal(masks[1], torch.from_numpy(RLE_MASK))
    assert torch.equal(masks[2], torch.from_numpy(CRLE_MASK))
    assert torch.equal(masks[0], torch.from_numpy(rect_mask(10, 30, 10, 30)))
    assert torch.equal(masks[3], torch.from_numpy(rect_mask(40, 48, 55, 64)))
    # boxes agree with the masks (masks_to_boxes gives the last pixel, not one past it)
    torch.testing.assert_close(masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]), boxes.as_subclass(torch.Tensor))
    assert target["image_id"] == 1
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == [0, 0, 0, 0]
    assert target["area"].dtype == torch.float32 and target["area"].tolist() == [400, 100, 60, 400]

    # crowd-only and annotation-free images give empty targets
    for i in (1, 2):
        image, target = ds[i]
        assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, H, W)
        assert target["labels"].shape == (0,) and target["area"].shape == (0,)

    images, targets = collate_fn([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2


def test_lazy_mask_validation(coco_files):
    ds = CocoInstanceDataset(*coco_files, validate_masks=False)
    expected = dict(EXPECTED_SKIPS, empty_segmentation=2)  # the tiny polygon is only found on load
    assert ds.skip_counts == expected
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1, 3, 1]
    assert ds.skip_counts["empty_segmentation"] == 3


def test_image_modes(tmp_path):
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    rgba = np.random.default_rng(0).integers(0, 256, (H, W, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    deep = np.zeros((H, W), np.uint16)
    deep[0, 0], deep[0, 1], deep[0, 2] = 65535, 32768, 255
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(gray, mode="L").convert("P").save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")

    for name in ("gray.png", "rgba.png", "deep.png", "pal.png"):
        img = load_image(tmp_path / name)
        assert img.shape == (3, H, W) and img.dtype == torch.float32, name
        assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0, name

    g = load_image(tmp_path / "gray.png")
    torch.testing.assert_close(g[0], torch.from_numpy(gray).float() / 255)
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])
    torch.testing.assert_close(
        load_image(tmp_path / "rgba.png"), torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float() / 255
    )
    d = load_image(tmp_path / "deep.png")
    assert d[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert d[0, 0, 1].item() == pytest.approx(32768 / 65535)
    assert d[0, 0, 2].item() == pytest.approx(255 / 65535)  # not mistaken for 8-bit white
    p = load_image(tmp_path / "pal.png")
    assert p.shape == (3, H, W)

    # the same through the dataset
    data = {
        "images": [
            {"id": i + 1, "file_name": n, "width": W, "height": H}
            for i, n in enumerate(["gray.png", "rgba.png", "deep.png", "pal.png"])
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    ds = CocoInstanceDataset(write_json(tmp_path / "m.json", data), tmp_path)
    for i in range(len(ds)):
        img, _ = ds[i]
        assert isinstance(img, tv_tensors.Image) and img.shape == (3, H, W) and img.dtype == torch.float32


# ---------------------------------------------------------------------------- errors
def test_malformed_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": [], "annotations": [\n  {"id": 1,, }]}')
    with pytest.raises(DatasetError) as e:
        load_coco_json(path)
    assert str(path) in str(e.value) and "line 2" in str(e.value)
    with pytest.raises(DatasetError):
        CocoInstanceDataset(path, tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_coco_json(tmp_path / "nope.json")
    assert issubclass(DatasetError, ValueError)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_missing_top_level_key(tmp_path, key):
    data = {"images": [], "annotations": [], "categories": []}
    del data[key]
    path = write_json(tmp_path / "x.json", data)
    with pytest.raises(DatasetError) as e:
        CocoInstanceDataset(path, tmp_path)
    assert str(path) in str(e.value) and f"'{key}'" in str(e.value)


@pytest.mark.parametrize("field", ["image_id", "category_id", "bbox"])
def test_annotation_missing_field(tmp_path, field):
    ann = {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "segmentation": [[0, 0, 4, 0, 4, 4]]}
    del ann[field]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "annotations": [ann],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = write_json(tmp_path / "x.json", data)
    with pytest.raises(DatasetError) as e:
        load_coco_json(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{field}'" in msg and "annotations[0]" in msg


def test_bad_bbox_and_segmentation(tmp_path):
    base = {
        "images": [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = write_json(
        tmp_path / "x.json", dict(base, annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4]}])
    )
    with pytest.raises(DatasetError, match="'bbox'"):
        load_coco_json(path)
    path = write_json(
        tmp_path / "y.json",
        dict(
            base,
            annotations=[
                {
                    "id": 1,
                    "image_id": 1,
                    "category_id": 1,
                    "bbox": [0, 0, 4, 4],
                    "segmentation": {"size": [10, 10], "counts": [100]},
                }
            ],
        ),
    )
    with pytest.raises(DatasetError) as e:
        CocoInstanceDataset(path, tmp_path)
    assert str(path) in str(e.value) and "'segmentation'" in str(e.value)


def test_missing_and_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    save_rgb(tmp_path / "small.png", h=10, w=10)
    data = {
        "images": [
            {"id": 1, "file_name": "missing.png", "width": W, "height": H},
            {"id": 2, "file_name": "broken.png", "width": W, "height": H},
            {"id": 3, "file_name": "small.png", "width": W, "height": H},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = write_json(tmp_path / "x.json", data)
    ds = CocoInstanceDataset(path, tmp_path)  # images are only opened on access
    for i, name in enumerate(["missing.png", "broken.png", "small.png"]):
        with pytest.raises(DatasetError) as e:
            ds[i]
        msg = str(e.value)
        assert str(tmp_path / name) in msg and "'file_name'" in msg and str(path) in msg, msg
    with pytest.raises(DatasetError, match="'width'/'height'"):
        ds[2]


# ---------------------------------------------------------------------------- transforms
@pytest.fixture(scope="module")
def shapes_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_tf")
    generate_shapes_dataset(out, 8, 0, image_size=96, seed=1)
    return out


def _check_consistent(image, target, atol=1.0):
    """Boxes, masks and the per-instance fields agree. Masks may keep another resolution than the
    image (``resize_masks=False``): the boxes are then compared in the masks' pixel frame."""
    boxes = target["boxes"].as_subclass(torch.Tensor)
    masks = target["masks"]
    n = boxes.shape[0]
    assert masks.shape[0] == n
    boxes = boxes_to_mask_frame(boxes, tuple(image.shape[-2:]), masks.shape[-2:])
    assert target["labels"].shape == (n,) and target["iscrowd"].shape == (n,) and target["area"].shape == (n,)
    assert tuple(target["boxes"].canvas_size) == tuple(image.shape[-2:])
    nonempty = masks.flatten(1).sum(1) > 0
    torch.testing.assert_close(masks_to_boxes(masks[nonempty]), boxes[nonempty], atol=atol, rtol=0)


def test_train_transform_flip_keeps_boxes_and_masks_in_step(shapes_ds):
    plain = CocoInstanceDataset(shapes_ds / "train.json", shapes_ds / "train")
    flipped = CocoInstanceDataset(
        shapes_ds / "train.json",
        shapes_ds / "train",
        transforms=build_transforms(True, flip_prob=1.0, color_jitter=False),
    )
    for i in range(len(plain)):
        img0, t0 = plain[i]
        img1, t1 = flipped[i]
        assert torch.equal(img1, img0.flip(-1))
        assert torch.equal(t1["masks"], t0["masks"].flip(-1))
        b0 = t0["boxes"].as_subclass(torch.Tensor)
        expected = torch.stack([96 - b0[:, 2], b0[:, 1], 96 - b0[:, 0], b0[:, 3]], 1)
        torch.testing.assert_close(t1["boxes"].as_subclass(torch.Tensor), expected)
        _check_consistent(img1, t1)


@pytest.mark.parametrize("resize_masks", [False, True])
def test_train_transform_full_pipeline(shapes_ds, resize_masks):
    torch.manual_seed(0)
    tf = build_transforms(True, min_size=(64, 80, 128), max_size=100, resize_masks=resize_masks)
    ds = CocoInstanceDataset(shapes_ds / "train.json", shapes_ds / "train", transforms=tf)
    sizes = set()
    for _ in range(2):
        for i in range(len(ds)):
            img, t = ds[i]
            assert isinstance(img, tv_tensors.Image) and img.dtype == torch.float32
            assert max(img.shape[-2:]) <= 100
            sizes.add(tuple(img.shape[-2:]))
            if resize_masks:
                assert t["masks"].shape[-2:] == img.shape[-2:]
                # nearest-neighbour downscaling may drop a boundary row/column of a mask:
                # allow one source pixel (<= 1.5 output px at these scales) on top of 1 px
                _check_consistent(img, t, atol=2.5)
            else:  # the masks keep their 96×96 resolution and stay exactly under their boxes
                assert t["masks"].shape[-2:] == (96, 96)
                _check_consistent(img, t, atol=1.0 + 1e-4)
            assert t["image_id"] == ds.ids[i]
    assert len(sizes) > 1  # the shortest side is drawn from the choices


def test_sanitize_drops_all_instance_fields():
    tf = build_transforms(True, flip_prob=0.0, color_jitter=False)
    masks = torch.zeros(3, 20, 20, dtype=torch.uint8)
    masks[0, 2:8, 2:8] = 1
    masks[2, 10:15, 10:18] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[2, 2, 8, 8], [5, 5, 5.5, 9], [10, 10, 18, 15]], format="XYXY", canvas_size=(20, 20)
        ),
        "labels": torch.tensor([1, 2, 3]),
        "masks": tv_tensors.Mask(masks),
        "image_id": 7,
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "area": torch.tensor([36.0, 2.0, 40.0]),
    }
    img, out = tf(tv_tensors.Image(torch.rand(3, 20, 20)), target)
    assert out["labels"].tolist() == [1, 3]
    assert out["area"].tolist() == [36.0, 40.0]
    assert out["iscrowd"].shape == (2,)
    assert torch.equal(out["masks"], masks[[0, 2]])
    assert out["image_id"] == 7


def test_eval_transform(shapes_ds):
    ds = CocoInstanceDataset(shapes_ds / "train.json", shapes_ds / "train")
    img, t = ds[0]
    img2, t2 = build_transforms(False)(img, t)
    assert torch.equal(img2, img) and torch.equal(t2["masks"], t["masks"])
    img3, t3 = build_transforms(False, min_size=(32, 48), max_size=1000)(img, t)
    assert img3.shape == (3, 48, 48)
    _check_consistent(img3, t3, atol=2.0)
