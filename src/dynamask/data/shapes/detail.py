"""The six "detail" shape families (ids 9-14): thin parts of an *absolute* width.

Legs, spokes, teeth, twigs, webs between holes and strokes stay a few pixels wide whatever the
object size, as on real objects, so that a 28x28 grid over the box cannot represent them while a
112x112 grid can. Each family is a function ``(rng, radius_px) -> ops``; :data:`DETAIL_OUTLINES`
maps the category id to it and :func:`~dynamask.data.shapes.raster.rasterise_ops` paints the ops.
"""

from __future__ import annotations

import math

import numpy as np

# written (after the eight basic ones) only by ``detail=True`` datasets
DETAIL_CATEGORIES: list[dict[str, object]] = [
    {"id": 9, "name": "spider", "supercategory": "detail"},
    {"id": 10, "name": "wheel", "supercategory": "detail"},
    {"id": 11, "name": "comb", "supercategory": "detail"},
    {"id": 12, "name": "tree", "supercategory": "detail"},
    {"id": 13, "name": "sieve", "supercategory": "detail"},
    {"id": 14, "name": "scribble", "supercategory": "detail"},
]

# A detail outline is a list of drawing operations in unit coordinates (the same
# frame as the basic outlines), painted in order onto the object's mask:
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


#: the outline function of each detail category id
DETAIL_OUTLINES = {9: _spider, 10: _wheel, 11: _comb, 12: _tree, 13: _sieve, 14: _scribble}
