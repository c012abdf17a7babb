"""Synthetic "shapes" instance-segmentation dataset with controlled outline complexity.

Eight categories by default, one shape family each, plus six "detail" families
(ids 9-14) with ``detail=True``:

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
9      spider       detail      body with 6-10 thin bent legs (+ antennae)
10     wheel        detail      thin rim, hub and 4-16 thin spokes
11     comb         detail      comb with many thin teeth, or fork with prongs
12     tree         detail      branching tree of strokes thinning to twigs
13     sieve        detail      plate perforated by many small holes or slots
14     scribble     detail      handwritten-like curve or cursive loops
=====  ===========  ==========  ==============================================

The eight simple categories are smooth relative to their box: cropped to the
box at 28x28 and pasted back they keep IoU ~0.99. The detail families carry
thin parts of an *absolute* width (legs, spokes, teeth, twigs, webs between
holes, strokes about 2.5-5 px wide, whatever the object size), as real objects
do, so that a 28x28 grid over a 100-200 px box cannot represent them while a
112x112 grid can (see :mod:`dynamask.evaluation.yardstick`). ``detail=False`` (the
default) renders exactly what it always did and writes the eight categories
only; ``detail=True`` draws each object from a simple family with probability
0.45 and from a detail family otherwise (detail objects are at least a quarter
of the image side across, so about 64-205 px at 256 px where the simple ones
are 20-205 px), and writes all 14 categories.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..cocotools import mask_utils

__all__ = [
    "DETAIL_CATEGORIES",
    "SHAPE_CATEGORIES",
    "complexity_of_mask",
    "generate_shapes_dataset",
    "make_shapes_tensors",
    "render_shapes_image",
    "shape_categories",
]

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

# written (after the eight above) only by ``detail=True`` datasets
DETAIL_CATEGORIES: list[dict[str, object]] = [
    {"id": 9, "name": "spider", "supercategory": "detail"},
    {"id": 10, "name": "wheel", "supercategory": "detail"},
    {"id": 11, "name": "comb", "supercategory": "detail"},
    {"id": 12, "name": "tree", "supercategory": "detail"},
    {"id": 13, "name": "sieve", "supercategory": "detail"},
    {"id": 14, "name": "scribble", "supercategory": "detail"},
]

# with detail=True, the probability that an object comes from a detail family
_DETAIL_PROBABILITY = 0.55
# with detail=True, detail objects are at least this fraction of the image side across
_DETAIL_MIN_SIZE_FRAC = 0.25


def shape_categories(detail: bool = False) -> list[dict[str, object]]:
    """The category list of a shapes dataset (copies): the eight simple ones, plus the detail
    families (ids 9, 10, ...) with ``detail=True``."""
    cats = SHAPE_CATEGORIES + (DETAIL_CATEGORIES if detail else [])
    return [dict(c) for c in cats]


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
# detail families (ids 9-14): unit-scale geometry, thin parts of absolute width
# --------------------------------------------------------------------------
# A detail outline is a list of drawing operations in unit coordinates (the same
# frame as the outlines above), painted in order onto the object's mask:
#   ("fill", pts, value)              polygon pts (K x 2) filled with value (0 cuts a hole)
#   ("stroke", pts, half_px, value)   polyline pts with round joints and caps, half-width in
#                                     *pixels* (does not scale with the object)
# cv2 fills also take every pixel the polygon edge touches, so a stroke of half-width h is
# rendered about 2h + 1 px wide and a hole of radius h about 2h - 1 px across.
_MIN_STROKE = 0.8  # half-width in px: rendered strokes stay >= ~2.6 px wide


def _circle_pts(centre, radius_x: float, radius_y: float | None = None, k: int = 48) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, k, endpoint=False)
    ry = radius_x if radius_y is None else radius_y
    return np.stack([centre[0] + radius_x * np.cos(t), centre[1] + ry * np.sin(t)], 1)


def _stroke_half(rng: np.random.Generator, lo: float = 0.8, hi: float = 1.6) -> float:
    """Half-width in px of a thin part (rendered about 2.6-4.2 px wide by default)."""
    return max(float(rng.uniform(lo, hi)), _MIN_STROKE)


def _normalise_ops(ops):
    """Centre the ops' points on their extent and scale them into [-1, 1] (half-widths in px
    are left alone)."""
    pts = np.concatenate([op[1] for op in ops])
    lo, hi = pts.min(0), pts.max(0)
    centre = (lo + hi) / 2.0
    scale = 1.0 / max(float((hi - lo).max()) / 2.0, 1e-9)
    return [(op[0], (op[1] - centre) * scale) + tuple(op[2:]) for op in ops]


def _spider(rng, radius_px: float):
    a = rng.uniform(0.2, 0.32)
    b = a * rng.uniform(0.55, 0.85)
    head = b * rng.uniform(0.5, 0.75)
    ops = [("fill", _circle_pts((-0.3 * a, 0.0), a, b), 1), ("fill", _circle_pts((0.7 * a + 0.6 * head, 0.0), head), 1)]
    half = _stroke_half(rng)
    per_side = int(rng.integers(3, 6))  # insects 3, spiders 4, more for myriapods
    bend = rng.choice([-1.0, 1.0])
    for side in (-1.0, 1.0):
        offsets = np.linspace(-0.95, 0.95, per_side) + rng.uniform(-0.12, 0.12, per_side)
        for _k, off in enumerate(offsets):
            phi = side * (np.pi / 2.0 - off)
            root = np.array([(-0.3 + 0.75 * off) * a, side * 0.7 * b])
            r1 = rng.uniform(0.5, 0.72)
            r2 = rng.uniform(0.82, 1.0)
            d1 = side * bend * rng.uniform(0.05, 0.3)
            d2 = d1 - side * bend * rng.uniform(0.1, 0.45)
            knee = r1 * np.array([math.cos(phi + d1), math.sin(phi + d1)])
            foot = r2 * np.array([math.cos(phi + d2), math.sin(phi + d2)])
            ops.append(("stroke", np.stack([root, knee, foot]), half, 1))
    if rng.random() < 0.5:  # antennae
        tip = np.array([0.7 * a + 1.2 * head, 0.0])
        for side in (-1.0, 1.0):
            ang = side * rng.uniform(0.25, 0.6)
            mid = tip + 0.25 * np.array([math.cos(ang), math.sin(ang)])
            end = mid + 0.25 * np.array([math.cos(ang * 1.6), math.sin(ang * 1.6)])
            ops.append(("stroke", np.stack([tip, mid, end]), max(0.85 * half, _MIN_STROKE), 1))
    return _normalise_ops(ops)


def _wheel(rng, radius_px: float):
    u = 1.0 / max(radius_px, 1e-6)
    e = rng.uniform(0.7, 1.0)  # seen at an angle
    rim = rng.uniform(2.5, 6.0) * u  # rim thickness, absolute
    inner = max(1.0 - rim, 0.25)
    inner_y = max(e - (1.0 - inner), 0.25 * e)
    ops = [("fill", _circle_pts((0.0, 0.0), 1.0, e, 96), 1), ("fill", _circle_pts((0.0, 0.0), inner, inner_y, 96), 0)]
    hub = max(rng.uniform(0.08, 0.2), 3.0 * u)
    ops.append(("fill", _circle_pts((0.0, 0.0), hub, hub * e, 32), 1))
    half = _stroke_half(rng, 0.8, 1.5)
    # spokes no closer than ~7 px at the rim
    n_max = max(4, int(2.0 * np.pi * inner / (7.0 * u)))
    n = int(min(rng.integers(4, 17), n_max))
    phase = rng.uniform(0.0, 2.0 * np.pi)
    reach = (inner + 1.0) / 2.0
    for k in range(n):
        t = phase + 2.0 * np.pi * k / n
        end = np.array([reach * math.cos(t), reach * inner_y / inner * math.sin(t)])
        ops.append(("stroke", np.stack([np.zeros(2), end]), half, 1))
    return ops


def _comb(rng, radius_px: float):
    u = 1.0 / max(radius_px, 1e-6)
    half = _stroke_half(rng)
    ops = []
    if rng.random() < 0.55:  # comb: a spine with many teeth
        spine = max(rng.uniform(0.12, 0.3), 4.0 * u)
        top = rng.uniform(0.0, 1.0)
        gap = rng.uniform(3.0, 7.0) * u  # between rendered teeth
        pitch = (2.0 * half + 1.0) * u + gap
        n = int(np.clip(int(1.9 / pitch), 3, 40))
        xs = np.linspace(-0.95, 0.95, n)
        ops.append(("fill", np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, -1.0 + spine], [-1.0, -1.0 + spine]]), 1))
        tops = top + rng.uniform(-0.05, 0.05, n) * (top + 1.0)
        for x, y1 in zip(xs, tops):
            ops.append(("stroke", np.array([[x, -1.0 + spine / 2.0], [x, y1]]), half, 1))
    else:  # fork / rake: handle, cross bar, a few long prongs
        width = rng.uniform(0.25, 0.6)
        bar = -rng.uniform(0.1, 0.4)
        handle_half = max(rng.uniform(1.5, 3.5), half)
        gap = rng.uniform(3.0, 8.0) * u
        pitch = (2.0 * half + 1.0) * u + gap
        n = int(np.clip(rng.integers(3, 9), 2, max(2, int(2.0 * width / pitch) + 1)))
        xs = np.linspace(-width, width, n)
        ops.append(("stroke", np.array([[0.0, -1.0], [0.0, bar]]), handle_half, 1))
        ops.append(("stroke", np.array([[-width, bar], [width, bar]]), handle_half, 1))
        length = rng.uniform(0.6, 1.0)
        for x in xs:
            curl = rng.uniform(-0.04, 0.04)
            ops.append(
                (
                    "stroke",
                    np.array([[x, bar], [x + curl, bar + 0.6 * (length - bar)], [x + 2 * curl, length]]),
                    half,
                    1,
                )
            )
    return _normalise_ops(ops)


def _tree(rng, radius_px: float):
    segs: list[tuple[np.ndarray, int]] = []
    depth = int(np.clip(round(math.log2(max(radius_px, 2.0) / 6.0)) + 1, 2, 5))
    branching = int(rng.integers(2, 4))
    spread = rng.uniform(0.35, 0.75)
    ratio = rng.uniform(0.6, 0.8)

    def grow(p, ang, length, level):
        bend = rng.uniform(-0.2, 0.2)
        mid = p + 0.5 * length * np.array([math.cos(ang), math.sin(ang)])
        end = mid + 0.5 * length * np.array([math.cos(ang + bend), math.sin(ang + bend)])
        segs.append((np.stack([p, mid, end]), level))
        if level >= depth:
            return
        k = branching if rng.random() < 0.8 else branching - 1
        for i in range(max(k, 1)):
            off = (i - (k - 1) / 2.0) * spread * 2.0 / max(k - 1, 1) if k > 1 else 0.0
            start = end if rng.random() < 0.6 else mid
            grow(start, ang + bend + off + rng.uniform(-0.2, 0.2), length * ratio * rng.uniform(0.85, 1.15), level + 1)

    grow(np.zeros(2), np.pi / 2.0, 1.0, 0)
    trunk = rng.uniform(1.8, 3.5)
    ops = [("stroke", pts, max(trunk * 0.72**level, _MIN_STROKE), 1) for pts, level in segs]
    return _normalise_ops(ops)


def _sieve(rng, radius_px: float):
    u = 1.0 / max(radius_px, 1e-6)
    aspect = rng.uniform(0.55, 1.0)
    round_plate = rng.random() < 0.5
    if round_plate:
        ops = [("fill", _circle_pts((0.0, 0.0), 1.0, aspect, 96), 1)]
    else:
        ops = [("fill", np.array([[-1.0, -aspect], [1.0, -aspect], [1.0, aspect], [-1.0, aspect]]), 1)]
    web = rng.uniform(3.5, 6.0)  # px of material between holes (about 1 px less once rendered)
    border = max(web, 3.0) * u
    if rng.random() < 0.7:  # round holes on a square or hexagonal grid
        hole = rng.uniform(1.8, 3.2)  # hole radius in px
        pitch = (2.0 * hole + web) * u
        hexagonal = rng.random() < 0.5
        ys = np.arange(
            -aspect + border + hole * u,
            aspect - border - hole * u + 1e-9,
            pitch * (math.sqrt(3) / 2 if hexagonal else 1.0),
        )
        centres = []
        for j, y in enumerate(ys):
            shift = pitch / 2.0 if hexagonal and j % 2 else 0.0
            for x in np.arange(-1.0 + border + hole * u + shift, 1.0 - border - hole * u + 1e-9, pitch):
                centres.append((x, y))
        c = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
        if round_plate and len(c):  # keep the holes inside the plate inset by the border
            ax, ay = 1.0 - border - hole * u, aspect - border - hole * u
            c = c[(c[:, 0] / max(ax, 1e-6)) ** 2 + (c[:, 1] / max(ay, 1e-6)) ** 2 <= 1.0]
        if len(c) > 400:
            c = c[np.sort(rng.choice(len(c), 400, replace=False))]
        for x, y in c:
            ops.append(("fill", _circle_pts((x, y), hole * u, None, 12), 0))
    else:  # slots: parallel thin cuts
        half = rng.uniform(0.9, 1.6)  # slot half-width in px
        pitch = (2.0 * half + web) * u
        length = rng.uniform(0.3, 0.8)
        ax, ay = 1.0 - border - half * u, aspect - border - half * u  # where slots may reach
        for y in np.arange(-ay, ay + 1e-9, pitch):
            reach = length
            if round_plate:
                reach = min(length, ax * math.sqrt(max(1.0 - (y / max(ay, 1e-6)) ** 2, 0.0)))
            if reach <= 2.0 * half * u:
                continue
            ops.append(("stroke", np.array([[-reach, y], [reach, y]]), half, 0))
    return ops


def _scribble(rng, radius_px: float):
    u = 1.0 / max(radius_px, 1e-6)
    if rng.random() < 0.5:  # smooth curve through random control points (Catmull-Rom)
        k = int(rng.integers(4, 9))
        ctrl = rng.uniform(-1.0, 1.0, (k, 2))
        ctrl = np.concatenate([ctrl[:1], ctrl, ctrl[-1:]])
        pieces = []
        for i in range(1, k):
            p0, p1, p2, p3 = ctrl[i - 1], ctrl[i], ctrl[i + 1], ctrl[i + 2]
            t = np.linspace(0.0, 1.0, 24, endpoint=False)[:, None]
            pieces.append(
                0.5
                * (
                    2 * p1
                    + (-p0 + p2) * t
                    + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                    + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
                )
            )
        pieces.append(ctrl[-2:-1])
        pts = np.concatenate(pieces)
    else:  # cursive loops, like a handwritten "eeee" or "llll"
        loops = rng.uniform(2.0, 6.0)
        t = np.linspace(0.0, 2.0 * np.pi * loops, int(60 * loops))
        big = rng.uniform(0.6, 1.4)
        drift = rng.uniform(0.5, 1.2)
        x = drift * t - big * np.sin(t)
        y = -rng.uniform(0.8, 2.0) * big * np.cos(t) + rng.uniform(-0.1, 0.1) * t
        pts = np.stack([x, y], 1)
    half = _stroke_half(rng, 0.9, 1.8)
    # thin out to about one point per 2 px at the final scale (the extent is normalised below)
    ext = float((pts.max(0) - pts.min(0)).max()) / 2.0
    step = np.linalg.norm(np.diff(pts, axis=0), axis=1) / max(ext, 1e-9)
    keep = [0]
    acc = 0.0
    for i, s_ in enumerate(step, start=1):
        acc += s_
        if acc >= 2.0 * u or i == len(pts) - 1:
            keep.append(i)
            acc = 0.0
    return _normalise_ops([("stroke", pts[keep], half, 1)])


_DETAIL_OUTLINES = {9: _spider, 10: _wheel, 11: _comb, 12: _tree, 13: _sieve, 14: _scribble}


def _rasterise_ops(ops, angle, radius, cx, cy, h, w) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * radius
    mask = np.zeros((h, w), dtype=np.uint8)
    origin = np.array([cx, cy])
    disc = np.stack(
        [np.cos(np.linspace(0, 2 * np.pi, 16, endpoint=False)), np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))],
        1,
    )

    def fix(q):
        return np.round(q * _SUBPIXEL_SCALE).astype(np.int32)

    for op in ops:
        pts = op[1] @ rot.T + origin
        if op[0] == "fill":
            cv2.fillPoly(mask, [fix(pts)], op[2], lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
            continue
        half, value = float(op[2]), op[3]
        for p in pts:  # round joints and caps
            cv2.fillConvexPoly(mask, fix(p + half * disc), value, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
        d = np.diff(pts, axis=0)
        length = np.linalg.norm(d, axis=1)
        for p, q, dd, ln in zip(pts[:-1], pts[1:], d, length):
            if ln < 1e-9:
                continue
            n = np.array([-dd[1], dd[0]]) * (half / ln)
            cv2.fillConvexPoly(
                mask, fix(np.stack([p + n, q + n, q - n, p - n])), value, lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT
            )
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


def _normalise_size(image_size: int | Sequence[int]) -> tuple[int, int]:
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

    ``detail=True`` also draws objects from the detail families (ids 9-14, see the module
    docstring); ``detail=False`` renders exactly what it always did."""
    h, w = _normalise_size(image_size)
    side = min(h, w)
    if min_visible_area is None:
        min_visible_area = max(12, int(round(0.001 * h * w)))
    bg = _background(rng, h, w)

    for _attempt in range(20):
        n = int(rng.integers(min_objects, max_objects + 1))
        full_masks, cats = [], []
        for _ in range(n):
            # (with detail=False no extra draw: the original sequence, bit for bit)
            if detail and rng.random() < _DETAIL_PROBABILITY:
                cat = int(DETAIL_CATEGORIES[int(rng.integers(0, len(DETAIL_CATEGORIES)))]["id"])
            else:
                cat = int(rng.integers(1, len(SHAPE_CATEGORIES) + 1))
            lo = min_size_frac
            if cat in _DETAIL_OUTLINES:  # room for thin parts: not smaller than a quarter of the side
                lo = min(max(min_size_frac, _DETAIL_MIN_SIZE_FRAC), max_size_frac)
            diameter = side * math.exp(rng.uniform(math.log(lo), math.log(max_size_frac)))
            radius = diameter / 2.0
            if cat in _DETAIL_OUTLINES:
                ops = _DETAIL_OUTLINES[cat](rng, radius)
                m = 0.6 * min(radius, side / 2.0)
                cx = rng.uniform(m, w - m)
                cy = rng.uniform(m, h - m)
                full = _rasterise_ops(ops, rng.uniform(0, 2 * np.pi), radius, cx, cy, h, w)
            else:
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
        visible: list[np.ndarray | None] = [None] * n
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
    colours: list[np.ndarray] = []
    instances: list[_Instance] = []
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
    h, w = _normalise_size(image_size)
    out = Path(out_dir)
    summary: dict = {
        "categories": shape_categories(detail),
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
                rng,
                (h, w),
                min_objects,
                max_objects,
                min_size_frac,
                max_size_frac,
                min_visible_area,
                min_visible_fraction,
                detail,
            )
            file_name = f"{idx:06d}.png"
            if not cv2.imwrite(str(img_dir / file_name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {img_dir / file_name}")
            image_id = idx + 1
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for inst in instances:
                rle = _encode(inst.mask)
                bbox = [float(v) for v in mask_utils.toBbox(rle)]
                annotations.append(
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
                ann_id += 1
        data = {
            "info": {
                "description": f"dynamask synthetic shapes ({split})",
                "version": "1.0",
                "seed": int(seed),
                "image_size": [h, w],
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": shape_categories(detail),
        }
        json_path = out / f"{split}.json"
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        summary[f"{split}_json"] = str(json_path)
        summary[f"{split}_dir"] = str(img_dir)
        summary["num_images"][split] = len(images)
        summary["num_annotations"][split] = len(annotations)
    return summary


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

    h, w = _normalise_size(image_size)
    images, targets = [], []
    for idx in range(int(n_images)):
        img, instances = render_shapes_image(_image_rng(seed, "train", idx), (h, w), detail=detail, **kwargs)
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
