"""Shape geometry in unit coordinates -> a binary pixel mask.

Both rasterisers rotate the unit-frame points by ``angle``, scale them by ``radius`` (pixels) and
move them to ``(cx, cy)``, then fill them with cv2 in fixed point (4 fractional bits), so that sub-pixel positions are kept.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fractional bits
_SUBPIXEL_SCALE = float(1 << _SUBPIXEL_SHIFT)


def rasterise_outline(polys, holes, angle, radius, cx, cy, h, w) -> np.ndarray:
    """An h x w uint8 mask of a basic outline: ``polys`` filled with 1, then ``holes`` with 0."""
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


def rasterise_ops(ops, angle, radius, cx, cy, h, w) -> np.ndarray:
    """An h x w uint8 mask of a detail outline: its drawing ops painted in order (see
    :mod:`dynamask.data.shapes.detail`; stroke half-widths are in pixels and not scaled)."""
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
