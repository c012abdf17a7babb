"""Synthetic "shapes" instance-segmentation dataset with controlled outline complexity.

Eight categories, one shape family each:

=====  ===========  ==========  ==============================================
id     name         group       outline
=====  ===========  ==========  ==============================================
1      ellipse      easy        smooth ellipse
2      rectangle    easy        rotated rectangle
3      triangle     easy        random (non-degenerate) triangle
4      star         hard        7-13 sharp spikes
5      gear         hard        8-14 trapezoidal teeth
6      blob         hard        Fourier-perturbed radius (wiggly outline)
7      ring         hard        annulus (mask with a hole)
8      cross        hard        thin plus-sign cross or thin L shape
=====  ===========  ==========  ==============================================

Objects are painted in order, later ones occluding earlier ones; each
annotation stores the *visible* mask only, and objects whose visible part is
too small are removed entirely (neither painted nor annotated), so every
painted object is annotated and vice versa.

Every image is rendered from its own random generator seeded with
``(seed, split, index)``: a dataset is deterministic by seed, a smaller dataset
is a prefix of a larger one with the same seed, and :func:`make_shapes_tensors`
returns exactly the first training images of :func:`generate_shapes_dataset`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "SHAPE_CATEGORIES",
    "complexity_of_mask",
    "generate_shapes_dataset",
    "make_shapes_tensors",
    "render_shapes_image",
]

SHAPE_CATEGORIES: List[Dict[str, object]] = [
    {"id": 1, "name": "ellipse", "supercategory": "easy"},
    {"id": 2, "name": "rectangle", "supercategory": "easy"},
    {"id": 3, "name": "triangle", "supercategory": "easy"},
    {"id": 4, "name": "star", "supercategory": "hard"},
    {"id": 5, "name": "gear", "supercategory": "hard"},
    {"id": 6, "name": "blob", "supercategory": "hard"},
    {"id": 7, "name": "ring", "supercategory": "hard"},
    {"id": 8, "name": "cross", "supercategory": "hard"},
]

_SPLIT_CODES = {"train": 0, "val": 1}
_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fractional bits
_SUBPIXEL_SCALE = float(1 << _SUBPIXEL_SHIFT)


# --------------------------------------------------------------------------
# complexity
# --------------------------------------------------------------------------
def complexity_of_mask(mask: np.ndarray) -> float:
    """Isoperimetric complexity ``perimeter**2 / (4*pi*area)`` of a binary mask.

    ``perimeter`` is the summed ``cv2.arcLength`` of all contours (outer
    boundaries *and* holes, ``RETR_LIST``), ``area`` the number of foreground
    pixels. About 1.0 for a disc, larger for spiky/holed/thin/fragmented masks.
    Returns 0.0 for an empty mask (and for a single isolated pixel, whose
    contour has zero length).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"complexity_of_mask expects a 2-D mask, got shape {m.shape}")
    m = (m > 0).astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return 0.0
    # pad so that contours touching the image border are traced as closed curves
    m = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = float(sum(cv2.arcLength(c, True) for c in contours))
    return perimeter * perimeter / (4.0 * math.pi * area)


# --------------------------------------------------------------------------
# shape outlines (unit scale, centred at the origin, extent about [-1, 1])
# --------------------------------------------------------------------------
def _ellipse(rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    b = rng.uniform(0.45, 1.0)
    return [np.stack([np.cos(t), b * np.sin(t)], 1)], []


def _rectangle(rng):
    a = rng.uniform(0.35, 1.0)
    return [np.array([[-1.0, -a], [1.0, -a], [1.0, a], [-1.0, a]])], []


def _triangle(rng):
    ang = np.array([0.0, 2.0 * np.pi / 3.0, 4.0 * np.pi / 3.0]) + rng.uniform(-0.35, 0.35, 3)
    r = rng.uniform(0.8, 1.0, 3)
    return [np.stack([r * np.cos(ang), r * np.sin(ang)], 1)], []


def _star(rng):
    n = int(rng.integers(7, 14))
    inner = rng.uniform(0.3, 0.5)
    ang = np.arange(2 * n) * (np.pi / n)
    r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
    return [np.stack([r * np.cos(ang), r * np.sin(ang)], 1)], []


def _gear(rng):
    n = int(rng.integers(8, 15))
    root = rng.uniform(0.68, 0.8)
    # one tooth per period: root land, rising flank, tip land, falling flank
    phase = np.array([0.0, 0.3, 0.4, 0.7, 0.8])
    radius = np.array([root, root, 1.0, 1.0, root])
    ang = ((np.arange(n)[:, None] + phase[None, :]) * (2.0 * np.pi / n)).ravel()
    r = np.tile(radius, n)
    return [np.stack([r * np.cos(ang), r * np.sin(ang)], 1)], []


def _blob(rng):
    t = np.linspace(0.0, 2.0 * np.pi, 200, endpoint=False)
    r = np.ones_like(t)
    for k in range(3, 13):
        r += rng.uniform(0.08, 0.3) / math.sqrt(k - 2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = np.maximum(r, 0.25)
    r /= r.max()
    return [np.stack([r * np.cos(t), r * np.sin(t)], 1)], []


def _ring(rng):
    t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    b = rng.uniform(0.75, 1.0)
    outer = np.stack([np.cos(t), b * np.sin(t)], 1)
    q = rng.uniform(0.45, 0.7)
    return [outer], [outer * q]


def _cross(rng, min_half_width: float):
    w = max(rng.uniform(0.09, 0.2), min_half_width)
    w = min(w, 0.45)
    if rng.random() < 0.5:  # plus-sign cross with arms of random lengths
        l, r_, d, u = rng.uniform(0.6, 1.0, 4)
        pts = [(-l, -w), (-w, -w), (-w, -d), (w, -d), (w, -w), (r_, -w),
               (r_, w), (w, w), (w, u), (-w, u), (-w, w), (-l, w)]
    else:  # L shape with its corner at (-1, -1)
        a = -1.0 + 2.0 * w
        ly = rng.uniform(0.5, 1.0)
        pts = [(-1.0, -1.0), (1.0, -1.0), (1.0, a), (a, a), (a, ly), (-1.0, ly)]
    return [np.asarray(pts, dtype=np.float64)], []


def _outline(cat_id: int, rng: np.random.Generator, radius_px: float):
    if cat_id == 1:
        return _ellipse(rng)
    if cat_id == 2:
        return _rectangle(rng)
    if cat_id == 3:
        return _triangle(rng)
    if cat_id == 4:
        return _star(rng)
    if cat_id == 5:
        return _gear(rng)
    if cat_id == 6:
        return _blob(rng)
    if cat_id == 7:
        return _ring(rng)
    if cat_id == 8:
        # keep arms at least ~2.5 px thick
        return _cross(rng, min_half_width=1.25 / max(radius_px, 1e-6))
    raise ValueError(f"unknown shape category id {cat_id}")


def _rasterise(polys, holes, angle, radius, cx, cy, h, w) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * radius
    mask = np.zeros((h, w), dtype=np.uint8)

    def to_px(p):
        q = p @ rot.T + np.array([cx, cy])
        return np.round(q * _SUBPIXEL_SCALE).astype(np.int32)

    cv2.fillPoly(mask, [to_px(p) for p in polys], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    if holes:
        cv2.fillPoly(mask, [to_px(p) for p in holes], 0, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return mask


# --------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------
def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0 = rng.uniform(20, 235, 3)
    c1 = np.clip(c0 + rng.normal(0, 45, 3), 0, 255)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(a) + yy * math.sin(a)) / max(h, w)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    img = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
    # smooth low-frequency colour noise
    g = int(rng.integers(3, 9))
    grid = rng.normal(0.0, rng.uniform(4, 22), (g, g, 3)).astype(np.float32)
    img += cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    # stripes
    if rng.random() < 0.4:
        f = rng.uniform(2, 12)
        b = rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(6, 25)
        tint = rng.uniform(0.5, 1.0, 3)
        stripes = np.sin(2 * np.pi * f * (xx * math.cos(b) + yy * math.sin(b)) / max(h, w) + rng.uniform(0, 6.3))
        img += amp * stripes[..., None] * tint[None, None, :]
    img += rng.normal(0.0, rng.uniform(2, 9), (h, w, 3))
    return img.astype(np.float32)


def _pick_colour(rng, reference: np.ndarray, others: Sequence[np.ndarray]) -> np.ndarray:
    """A fill colour far from ``reference`` (local background) and from ``others``."""
    best, best_score = None, -1.0
    for _ in range(48):
        c = rng.uniform(0, 255, 3)
        d_bg = float(np.linalg.norm(c - reference))
        d_obj = min((float(np.linalg.norm(c - o)) for o in others), default=1e9)
        score = min(d_bg / 110.0, d_obj / 70.0)
        if score >= 1.0:
            return c
        if score > best_score:
            best, best_score = c, score
    return best


@dataclass
class _Instance:
    category_id: int
    mask: np.ndarray  # visible mask, uint8 H x W


def _normalise_size(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = (int(v) for v in image_size)
    return h, w


def render_shapes_image(
    rng: np.random.Generator,
    image_size: Union[int, Sequence[int]] = 128,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size_frac: float = 0.08,
    max_size_frac: float = 0.8,
    min_visible_area: Optional[int] = None,
    min_visible_fraction: float = 0.1,
) -> Tuple[np.ndarray, List[_Instance]]:
    """Render one image. Returns (uint8 H x W x 3 RGB image, visible instances in paint order)."""
    h, w = _normalise_size(image_size)
    side = min(h, w)
    if min_visible_area is None:
        min_visible_area = max(12, int(round(0.001 * h * w)))
    bg = _background(rng, h, w)

    for _attempt in range(20):
        n = int(rng.integers(min_objects, max_objects + 1))
        full_masks, cats = [], []
        for _ in range(n):
            cat = int(rng.integers(1, len(SHAPE_CATEGORIES) + 1))
            diameter = side * math.exp(rng.uniform(math.log(min_size_frac), math.log(max_size_frac)))
            radius = diameter / 2.0
            polys, holes = _outline(cat, rng, radius)
            m = 0.6 * min(radius, side / 2.0)
            cx = rng.uniform(m, w - m)
            cy = rng.uniform(m, h - m)
            full = _rasterise(polys, holes, rng.uniform(0, 2 * np.pi), radius, cx, cy, h, w)
            full_masks.append(full)
            cats.append(cat)

        # Drop objects whose visible part is too small. Removing an object can only
        # enlarge the visible parts of the objects below it, so a single top-down
        # pass settles which objects are kept.
        kept = [False] * n
        cover = np.zeros((h, w), dtype=bool)
        visible: List[Optional[np.ndarray]] = [None] * n
        for i in range(n - 1, -1, -1):
            full = full_masks[i].astype(bool)
            full_area = int(full.sum())
            vis = full & ~cover
            va = int(vis.sum())
            if full_area > 0 and va >= min_visible_area and va >= min_visible_fraction * full_area:
                kept[i] = True
                visible[i] = vis
                cover |= full
        if any(kept):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not place any visible object")

    img = bg
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colours: List[np.ndarray] = []
    instances: List[_Instance] = []
    for i in range(n):
        if not kept[i]:
            continue
        full = full_masks[i].astype(bool)
        ref = img[full].mean(axis=0)
        colour = _pick_colour(rng, ref, colours)
        colours.append(colour)
        # mild shading + grain so objects are not perfectly flat
        a = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(-18, 18) * ((xx * math.cos(a) + yy * math.sin(a)) / max(h, w) - 0.5)
        fill = colour[None, :] + shade[full][:, None] + rng.normal(0, rng.uniform(2, 6), (int(full.sum()), 3))
        img[full] = fill
        instances.append(_Instance(cats[i], visible[i].astype(np.uint8)))
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out, instances


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])


def _encode(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def generate_shapes_dataset(
    out_dir: Union[str, os.PathLike],
    num_train: int,
    num_val: int,
    image_size: Union[int, Sequence[int]] = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size_frac: float = 0.08,
    max_size_frac: float = 0.8,
    min_visible_area: Optional[int] = None,
    min_visible_fraction: float = 0.1,
) -> dict:
    """Write a COCO-format synthetic shapes dataset.

    Layout: ``out_dir/{train,val}/NNNNNN.png`` and ``out_dir/{train,val}.json``
    (``file_name`` is relative to the split's image folder). Annotations hold
    the visible mask as compressed RLE (``counts`` is a str), ``bbox`` [x, y, w, h]
    from the mask, ``area`` (pixel count), ``iscrowd`` 0 and ``complexity``
    (:func:`complexity_of_mask` of the visible mask, rounded to 4 decimals).

    ``image_size`` is an int (square) or (H, W). ``min_visible_area`` defaults
    to max(12, 0.1 % of the image pixels). Same arguments give byte-identical
    JSON and PNG files.

    Returns a summary dict with ``train_json``, ``val_json``, ``train_dir``,
    ``val_dir`` (str paths), ``categories``, ``num_images`` and
    ``num_annotations`` (dicts keyed by split).
    """
    if min_objects < 1 or max_objects < min_objects:
        raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    if not 0 < min_size_frac <= max_size_frac:
        raise ValueError(f"need 0 < min_size_frac <= max_size_frac, got {min_size_frac}, {max_size_frac}")
    h, w = _normalise_size(image_size)
    out = Path(out_dir)
    summary: dict = {
        "categories": [dict(c) for c in SHAPE_CATEGORIES],
        "num_images": {},
        "num_annotations": {},
    }
    for split, count in (("train", num_train), ("val", num_val)):
        img_dir = out / split
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        ann_id = 1
        for idx in range(int(count)):
            rng = _image_rng(seed, split, idx)
            img, instances = render_shapes_image(
                rng, (h, w), min_objects, max_objects, min_size_frac, max_size_frac,
                min_visible_area, min_visible_fraction,
            )
            file_name = f"{idx:06d}.png"
            if not cv2.imwrite(str(img_dir / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {img_dir / file_name}")
            image_id = idx + 1
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for inst in instances:
                rle = _encode(inst.mask)
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                annotations.append({
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": inst.category_id,
                    "segmentation": rle,
                    "area": float(inst.mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                    "complexity": round(complexity_of_mask(inst.mask), 4),
                })
                ann_id += 1
        data = {
            "info": {"description": f"dynamask synthetic shapes ({split})", "version": "1.0",
                     "seed": int(seed), "image_size": [h, w]},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [dict(c) for c in SHAPE_CATEGORIES],
        }
        json_path = out / f"{split}.json"
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        summary[f"{split}_json"] = str(json_path)
        summary[f"{split}_dir"] = str(img_dir)
        summary["num_images"][split] = len(images)
        summary["num_annotations"][split] = len(annotations)
    return summary


def make_shapes_tensors(n_images: int, image_size: Union[int, Sequence[int]] = 128, seed: int = 0, **kwargs):
    """In-memory shapes samples (no files).

    Returns ``(images, targets)``: ``images`` is a list of float32 3 x H x W
    tensors in [0, 1]; each target has ``boxes`` (float32 N x 4, XYXY, with
    x2 = last column + 1 like COCO's bbox), ``labels`` (int64, 1..8) and
    ``masks`` (uint8 N x H x W, visible masks). Image ``i`` is identical to
    ``train/{i:06d}.png`` of ``generate_shapes_dataset(..., seed=seed)`` with the
    same size options (``kwargs`` are the renderer options).
    """
    import torch

    h, w = _normalise_size(image_size)
    images, targets = [], []
    for idx in range(int(n_images)):
        img, instances = render_shapes_image(_image_rng(seed, "train", idx), (h, w), **kwargs)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0).contiguous())
        if instances:
            masks = np.stack([inst.mask for inst in instances])
        else:  # pragma: no cover - renderer always keeps >= 1 object
            masks = np.zeros((0, h, w), dtype=np.uint8)
        boxes = np.zeros((len(instances), 4), dtype=np.float32)
        for k, inst in enumerate(instances):
            ys, xs = np.nonzero(inst.mask)
            boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        targets.append({
            "boxes": torch.from_numpy(boxes),
            "labels": torch.tensor([inst.category_id for inst in instances], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
        })
    return images, targets
