"""Boundary IoU (Cheng et al. 2021) of one image's masks, computed on each mask's box only.

The definition is faster-coco-eval's ``iouType="boundary"`` (and the Boundary IoU API's): a
mask's boundary band is the mask minus its erosion by ``d = max(1, round(ratio × image
diagonal))`` pixels (a (2d+1)-square), pixels outside the image counting as background; the
boundary IoU of a detection and a ground-truth object is the IoU of their bands, and the score
used for matching is the smaller of it and the mask IoU (crowd regions: the mask IoU alone).

Why it is cheaper here: a band lies inside its mask's box, and an erosion inside the box only
needs the box and zeros around it, so each band is computed on the box crop (decoded from the
RLE without the rest of the image) with a constant-zero border -- the same pixels as the band
of the whole image. Each mask's band is computed once, and only for pairs whose mask IoU is
above 0 (a band lies inside its mask: no mask overlap, no band overlap), so a detection that
meets no ground truth of its category is never decoded.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .rle import crop_from_runs, rle_runs_many

__all__ = ["dilation_pixels", "BandCache", "boundary_ious"]


def dilation_pixels(height: int, width: int, ratio: float) -> int:
    """``d``: the band's width in pixels, ``round(ratio × diagonal)`` (halves away from 0), at least 1."""
    return max(1, int(math.floor(ratio * math.sqrt(height * height + width * width) + 0.5)))


class BandCache:
    """The bands of one image's masks, each computed once: :meth:`prepare` reads the run lengths
    of the masks a block needs (together: one pass of NumPy calls), ``band(key)`` is (box, band
    crop as uint8 0/1, its pixel count). ``source(key)`` gives (RLE bytes, box x, y, w, h)."""

    def __init__(self, height: int, width: int, ratio: float, source: Callable[[object], tuple[bytes, tuple]]):
        import cv2

        self.height, self.source = height, source
        d = dilation_pixels(height, width, ratio)
        self.kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1))
        self.bands: dict[object, tuple[tuple, np.ndarray, int]] = {}
        self.runs: dict[object, tuple[tuple, np.ndarray]] = {}

    def prepare(self, keys) -> None:
        todo = [k for k in dict.fromkeys(keys) if k not in self.bands and k not in self.runs]
        if todo:
            sources = [self.source(k) for k in todo]
            for k, (_, box), runs in zip(todo, sources, rle_runs_many([counts for counts, _ in sources])):
                self.runs[k] = (box, runs)

    def band(self, key) -> tuple[tuple, np.ndarray, int]:
        hit = self.bands.get(key)
        if hit is None:
            import cv2

            self.prepare([key])
            box, runs = self.runs.pop(key)
            crop = crop_from_runs(runs, self.height, box)
            eroded = cv2.erode(crop, self.kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
            band = cv2.subtract(crop, eroded)
            hit = self.bands[key] = (box, band, int(cv2.countNonZero(band)))
        return hit


def _band_iou(a: tuple[tuple, np.ndarray, int], b: tuple[tuple, np.ndarray, int]) -> float:
    (xa, ya, wa, ha), band_a, na = a
    (xb, yb, wb, hb), band_b, nb = b
    x0, x1 = max(xa, xb), min(xa + wa, xb + wb)
    y0, y1 = max(ya, yb), min(ya + ha, yb + hb)
    inter = 0
    if x1 > x0 and y1 > y0:
        inter = int(
            np.count_nonzero(
                band_a[y0 - ya : y1 - ya, x0 - xa : x1 - xa] & band_b[y0 - yb : y1 - yb, x0 - xb : x1 - xb]
            )
        )
    union = na + nb - inter
    return inter / union if union > 0 else 0.0


def boundary_ious(mask_ious: np.ndarray, crowd: np.ndarray, det_keys, gt_keys, bands: BandCache) -> np.ndarray:
    """The boundary-AP scores of a block of detections × ground truths: min(mask IoU, band IoU)
    for non-crowd ground truth where the mask IoU is above 0, 0 where it is 0, the mask IoU
    for crowd regions."""
    out = np.where(crowd[None, :], mask_ious, 0.0)
    rows, cols = np.nonzero((mask_ious > 0) & ~crowd[None, :])
    bands.prepare([det_keys[r] for r in rows.tolist()] + [gt_keys[c] for c in cols.tolist()])
    for r, c in zip(rows.tolist(), cols.tolist()):
        out[r, c] = min(mask_ious[r, c], _band_iou(bands.band(det_keys[r]), bands.band(gt_keys[c])))
    return out
