"""Outline complexity of a mask: the ``complexity`` field of every shapes annotation (and a
measure that works on any binary mask)."""

from __future__ import annotations

import math

import cv2
import numpy as np


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
