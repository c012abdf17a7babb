"""One shapes image: a textured background and objects placed, occluding and painted in order.

Objects are painted in order, later ones occluding earlier ones; each instance keeps its
*visible* mask only, and objects whose visible part is too small are removed entirely (neither
painted nor returned), so every painted object is an instance and vice versa. The random draws
happen in a fixed order (background, objects, colours), which is what makes a dataset
reproducible from its seed: any change of that order changes every image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .basic import SHAPE_CATEGORIES, basic_outline
from .detail import DETAIL_CATEGORIES, DETAIL_OUTLINES
from .raster import rasterise_ops, rasterise_outline

# with detail=True, the probability that an object comes from a detail family
_DETAIL_PROBABILITY = 0.55
# with detail=True, detail objects are at least this fraction of the image side across
_DETAIL_MIN_SIZE_FRAC = 0.25


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A float32 h x w x 3 background: a colour ramp, smooth colour noise, sometimes stripes, and
    pixel noise (so that an object is not found by its flat surroundings)."""
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
    """One object of a rendered image, as the annotation keeps it."""

    category_id: int
    mask: np.ndarray  # visible mask, uint8 H x W


def normalise_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of an ``image_size`` given as an int (square) or a pair."""
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = (int(v) for v in image_size)
    return h, w


def render_shapes_image(
    rng: np.random.Generator,
    image_size: int | Sequence[int] = 128,
    min_objects: int = 1,
    max_objects: int = 4,
    min_size_frac: float = 0.08,
    max_size_frac: float = 0.8,
    min_visible_area: int | None = None,
    min_visible_fraction: float = 0.1,
    detail: bool = False,
) -> tuple[np.ndarray, list[_Instance]]:
    """Render one image. Returns (uint8 H x W x 3 RGB image, visible instances in paint order).

    ``detail=True`` also draws objects from the detail families (ids 9-14, see
    :mod:`dynamask.data.shapes`); ``detail=False`` renders exactly what it always did."""
    h, w = normalise_size(image_size)
    if min_visible_area is None:
        min_visible_area = max(12, int(round(0.001 * h * w)))
    background = _background(rng, h, w)
    for _attempt in range(20):
        n = int(rng.integers(min_objects, max_objects + 1))
        objects = [_draw_object(rng, h, w, min_size_frac, max_size_frac, detail) for _ in range(n)]
        visible = _visible_parts([full for _, full in objects], h, w, min_visible_area, min_visible_fraction)
        if any(v is not None for v in visible):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not place any visible object")
    return _paint_objects(rng, background, objects, visible)


def _draw_category(rng: np.random.Generator, detail: bool) -> int:
    """The category id of the next object (with ``detail=False`` no extra draw: the original
    sequence, bit for bit)."""
    if detail and rng.random() < _DETAIL_PROBABILITY:
        return int(DETAIL_CATEGORIES[int(rng.integers(0, len(DETAIL_CATEGORIES)))]["id"])
    return int(rng.integers(1, len(SHAPE_CATEGORIES) + 1))


def _draw_centre(rng: np.random.Generator, radius: float, h: int, w: int) -> tuple[float, float]:
    """``(cx, cy)`` of an object: at least 0.6 of its radius (and at most 0.3 of the image side)
    inside the image, so that it may reach over the border but stays mostly visible."""
    m = 0.6 * min(radius, min(h, w) / 2.0)
    cx = rng.uniform(m, w - m)
    cy = rng.uniform(m, h - m)
    return cx, cy


def _draw_object(
    rng: np.random.Generator, h: int, w: int, min_size_frac: float, max_size_frac: float, detail: bool
) -> tuple[int, np.ndarray]:
    """One object as if alone in the image: ``(category id, full uint8 h x w mask)``. Draws its
    category, size (log-uniform), outline, centre and angle, in this order."""
    side = min(h, w)
    cat = _draw_category(rng, detail)
    lo = min_size_frac
    if cat in DETAIL_OUTLINES:  # room for thin parts: not smaller than a quarter of the side
        lo = min(max(min_size_frac, _DETAIL_MIN_SIZE_FRAC), max_size_frac)
    diameter = side * math.exp(rng.uniform(math.log(lo), math.log(max_size_frac)))
    radius = diameter / 2.0
    if cat in DETAIL_OUTLINES:
        ops = DETAIL_OUTLINES[cat](rng, radius)
        cx, cy = _draw_centre(rng, radius, h, w)
        return cat, rasterise_ops(ops, rng.uniform(0, 2 * np.pi), radius, cx, cy, h, w)
    polys, holes = basic_outline(cat, rng, radius)
    cx, cy = _draw_centre(rng, radius, h, w)
    return cat, rasterise_outline(polys, holes, rng.uniform(0, 2 * np.pi), radius, cx, cy, h, w)


def _visible_parts(
    full_masks: Sequence[np.ndarray], h: int, w: int, min_visible_area: int, min_visible_fraction: float
) -> list[np.ndarray | None]:
    """The visible (bool) part of each object under the ones painted after it; None for an object
    dropped because too little of it shows.

    Removing an object can only enlarge the visible parts of the objects below it, so a single
    top-down pass settles which objects are kept."""
    n = len(full_masks)
    cover = np.zeros((h, w), dtype=bool)
    visible: list[np.ndarray | None] = [None] * n
    for i in range(n - 1, -1, -1):
        full = full_masks[i].astype(bool)
        full_area = int(full.sum())
        vis = full & ~cover
        va = int(vis.sum())
        if full_area > 0 and va >= min_visible_area and va >= min_visible_fraction * full_area:
            visible[i] = vis
            cover |= full
    return visible


def _paint_objects(
    rng: np.random.Generator,
    img: np.ndarray,
    objects: Sequence[tuple[int, np.ndarray]],
    visible: Sequence[np.ndarray | None],
) -> tuple[np.ndarray, list[_Instance]]:
    """Paint the kept objects in order onto ``img`` (float32 H x W x 3, changed in place), each in a
    colour that stands out from what lies under it and from the objects before; returns the uint8
    image and the instances."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colours: list[np.ndarray] = []
    instances: list[_Instance] = []
    for (cat, full_mask), vis in zip(objects, visible):
        if vis is None:
            continue
        full = full_mask.astype(bool)
        ref = img[full].mean(axis=0)
        colour = _pick_colour(rng, ref, colours)
        colours.append(colour)
        # mild shading + grain so objects are not perfectly flat
        a = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(-18, 18) * ((xx * math.cos(a) + yy * math.sin(a)) / max(h, w) - 0.5)
        fill = colour[None, :] + shade[full][:, None] + rng.normal(0, rng.uniform(2, 6), (int(full.sum()), 3))
        img[full] = fill
        instances.append(_Instance(cat, vis.astype(np.uint8)))
    out = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out, instances
