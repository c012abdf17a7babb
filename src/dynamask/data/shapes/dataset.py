"""The shapes dataset: one random generator per image, COCO files on disk or tensors in memory.

Every image is rendered from its own random generator seeded with ``(seed, split, index)``: a
dataset is deterministic by seed, a smaller dataset is a prefix of a larger one with the same seed,
and :func:`make_shapes_tensors` returns exactly the first training images of
:func:`generate_shapes_dataset`. Benchmarks key their evaluations on the files' digests, so the
bytes written here must not change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ...cocotools import mask_utils
from .basic import SHAPE_CATEGORIES
from .complexity import complexity_of_mask
from .detail import DETAIL_CATEGORIES
from .scene import normalise_size, render_shapes_image

_SPLIT_CODES = {"train": 0, "val": 1}


def shape_categories(detail: bool = False) -> list[dict[str, object]]:
    """The category list of a shapes dataset (copies): the eight simple ones, plus the detail
    families (ids 9, 10, ...) with ``detail=True``."""
    cats = SHAPE_CATEGORIES + (DETAIL_CATEGORIES if detail else [])
    return [dict(c) for c in cats]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator that renders image ``index`` of ``split`` ("train" or "val")."""
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def generate_shapes_dataset(
    out_dir: str | os.PathLike,
    num_train: int,
    num_val: int,
    image_size: int | Sequence[int] = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size_frac: float = 0.08,
    max_size_frac: float = 0.8,
    min_visible_area: int | None = None,
    min_visible_fraction: float = 0.1,
    detail: bool = False,
) -> dict:
    """Write a COCO-format synthetic shapes dataset.

    Layout: ``out_dir/{train,val}/NNNNNN.png`` and ``out_dir/{train,val}.json``
    (``file_name`` is relative to the split's image folder). Annotations hold
    the visible mask as compressed RLE (``counts`` is a str), ``bbox`` [x, y, w, h]
    from the mask, ``area`` (pixel count), ``iscrowd`` 0 and ``complexity``
    (:func:`complexity_of_mask` of the visible mask, rounded to 4 decimals).

    ``image_size`` is an int (square) or (H, W). ``min_visible_area`` defaults
    to max(12, 0.1 % of the image pixels). Same arguments give byte-identical
    JSON and PNG files. ``detail=True`` adds the detail families (categories 9-14, supercategory
    "detail") to the objects drawn and to the category list; with the default size fractions
    objects are then about 20-200 px across at 256 px.

    Returns a summary dict with ``train_json``, ``val_json``, ``train_dir``,
    ``val_dir`` (str paths), ``categories``, ``num_images`` and
    ``num_annotations`` (dicts keyed by split).
    """
    if min_objects < 1 or max_objects < min_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 0 < min_size_frac <= max_size_frac:
        raise ValueError(f"need 0 < min_size_frac <= max_size_frac, got {min_size_frac}, {max_size_frac}")
    h, w = normalise_size(image_size)
    render_options = {
        "min_objects": min_objects,
        "max_objects": max_objects,
        "min_size_frac": min_size_frac,
        "max_size_frac": max_size_frac,
        "min_visible_area": min_visible_area,
        "min_visible_fraction": min_visible_fraction,
        "detail": detail,
    }
    out = Path(out_dir)
    summary: dict = {
        "categories": shape_categories(detail),
        "num_images": {},
        "num_annotations": {},
    }
    for split, count in (("train", num_train), ("val", num_val)):
        img_dir = out / split
        images, annotations = _write_split_images(img_dir, split, int(count), seed, (h, w), render_options)
        json_path = out / f"{split}.json"
        document = _coco_document(split, seed, (h, w), images, annotations, shape_categories(detail))
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(document, f, separators=(",", ":"))
        summary[f"{split}_json"] = str(json_path)
        summary[f"{split}_dir"] = str(img_dir)
        summary["num_images"][split] = len(images)
        summary["num_annotations"][split] = len(annotations)
    return summary


def _write_split_images(
    img_dir: Path, split: str, count: int, seed: int, size: tuple[int, int], render_options: dict
) -> tuple[list[dict], list[dict]]:
    """Render and write the PNG files of one split; returns its COCO ``images`` and ``annotations``."""
    h, w = size
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for idx in range(count):
        img, instances = render_shapes_image(image_rng(seed, split, idx), (h, w), **render_options)
        file_name = f"{idx:06d}.png"
        if not cv2.imwrite(str(img_dir / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {img_dir / file_name}")
        image_id = idx + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        annotations.extend(_annotations(instances, image_id, first_id=len(annotations) + 1))
    return images, annotations


def _annotations(instances: Sequence, image_id: int, first_id: int) -> list[dict]:
    """The COCO annotations of one image's instances (ids counting up from ``first_id``)."""
    out = []
    for ann_id, inst in enumerate(instances, start=first_id):
        rle = _encode(inst.mask)
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        out.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": inst.category_id,
                "segmentation": rle,
                "area": float(inst.mask.sum()),
                "bbox": bbox,
                "iscrowd": 0,
                "complexity": round(complexity_of_mask(inst.mask), 4),
            }
        )
    return out


def _coco_document(
    split: str, seed: int, size: tuple[int, int], images: list, annotations: list, categories: list
) -> dict:
    """The json of one split (key order is part of the file's bytes)."""
    h, w = size
    return {
        "info": {
            "description": f"dynamask synthetic shapes ({split})",
            "version": "1.0",
            "seed": int(seed),
            "image_size": [h, w],
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def make_shapes_tensors(
    n_images: int, image_size: int | Sequence[int] = 128, seed: int = 0, detail: bool = False, **kwargs
):
    """In-memory shapes samples (no files).

    Returns ``(images, targets)``: ``images`` is a list of float32 3 x H x W
    tensors in [0, 1]; each target has ``boxes`` (float32 N x 4, XYXY, with
    x2 = last column + 1 like COCO's bbox), ``labels`` (int64, 1..8; 1..14 with ``detail``) and
    ``masks`` (uint8 N x H x W, visible masks). Image ``i`` is identical to
    ``train/{i:06d}.png`` of ``generate_shapes_dataset(..., seed=seed)`` with the
    same size and ``detail`` options (``kwargs`` are the other renderer options).
    """
    import torch

    h, w = normalise_size(image_size)
    images, targets = [], []
    for idx in range(int(n_images)):
        img, instances = render_shapes_image(image_rng(seed, "train", idx), (h, w), detail=detail, **kwargs)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0).contiguous())
        if instances:
            masks = np.stack([inst.mask for inst in instances])
        else:  # pragma: no cover - renderer always keeps >= 1 object
            masks = np.zeros((0, h, w), dtype=np.uint8)
        boxes = np.zeros((len(instances), 4), dtype=np.float32)
        for k, inst in enumerate(instances):
            ys, xs = np.nonzero(inst.mask)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        targets.append(
            {
                "boxes": torch.from_numpy(boxes),
                "labels": torch.tensor([inst.category_id for inst in instances], dtype=torch.int64),
                "masks": torch.from_numpy(masks),
            }
        )
    return images, targets
