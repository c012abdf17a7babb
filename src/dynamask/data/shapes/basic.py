"""The eight basic shape families (ids 1-8): outlines smooth relative to their box.

Each outline is drawn from ``rng`` in unit coordinates, centred at the origin with an extent of
about [-1, 1], as ``(polygons, holes)``: lists of K x 2 point arrays that
:func:`~dynamask.data.shapes.raster.rasterise_outline` fills (holes are cut out afterwards).
"""

from __future__ import annotations

import math

import numpy as np

SHAPE_CATEGORIES: list[dict[str, object]] = [
    {"id": 1, "name": "ellipse", "supercategory": "easy"},
    {"id": 2, "name": "rectangle", "supercategory": "easy"},
    {"id": 3, "name": "triangle", "supercategory": "easy"},
    {"id": 4, "name": "star", "supercategory": "hard"},
    {"id": 5, "name": "gear", "supercategory": "hard"},
    {"id": 6, "name": "blob", "supercategory": "hard"},
    {"id": 7, "name": "ring", "supercategory": "hard"},
    {"id": 8, "name": "cross", "supercategory": "hard"},
]


def _ellipse(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
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
        l_, r_, d, u = rng.uniform(0.6, 1.0, 4)
        pts = [
            (-l_, -w),
            (-w, -w),
            (-w, -d),
            (w, -d),
            (w, -w),
            (r_, -w),
            (r_, w),
            (w, w),
            (w, u),
            (-w, u),
            (-w, w),
            (-l_, w),
        ]
    else:  # L shape with its corner at (-1, -1)
        a = -1.0 + 2.0 * w
        ly = rng.uniform(0.5, 1.0)
        pts = [(-1.0, -1.0), (1.0, -1.0), (1.0, a), (a, a), (a, ly), (-1.0, ly)]
    return [np.asarray(pts, dtype=np.float64)], []


def basic_outline(cat_id: int, rng: np.random.Generator, radius_px: float):
    """``(polygons, holes)`` of basic category ``cat_id`` for an object of radius ``radius_px``."""
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
