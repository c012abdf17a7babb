"""Image files -> float32 3 x H x W tensors in [0, 1], and their EXIF orientation.

Photos often store their pixels sideways with an EXIF tag saying how to turn them upright;
:func:`upright_size` lets the dataset decide from the json ``width``/``height`` which of the two
the annotations were made on (see :class:`~dynamask.data.coco.CocoInstanceDataset`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps

#: EXIF tag 0x0112 (Orientation); values 5-8 mean the upright picture is the stored one turned by
#: 90 degrees (width and height swap), 2-4 a flip or a half turn (same size)
EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened PIL image; 1 (as stored) when absent or unreadable."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def upright_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of the image as shown upright per its EXIF orientation."""
    w, h = im.size
    return (h, w) if exif_orientation(im) in _SWAPPING_ORIENTATIONS else (w, h)


def load_image(path: str | os.PathLike, exif_transpose: bool = False) -> torch.Tensor:
    """Load an image file as a float32 3 x H x W tensor in [0, 1].

    Grayscale, palette, RGBA/LA (alpha dropped), CMYK etc. are converted to RGB;
    16-bit grayscale (PIL modes ``I;16*`` and ``I``) is scaled by 1/65535,
    32-bit float (``F``) is clipped to [0, 1]. The EXIF orientation is applied
    only with ``exif_transpose=True`` (the photo as a viewer shows it upright);
    by default the stored pixel grid is returned (see :class:`CocoInstanceDataset`
    for how the training data chooses between the two).
    Raises the underlying ``OSError``/``PIL.UnidentifiedImageError``.
    """
    with Image.open(path) as im:
        im.load()
        if exif_transpose and exif_orientation(im) != 1:
            return pil_image_to_tensor(ImageOps.exif_transpose(im))
        return pil_image_to_tensor(im)


def pil_image_to_tensor(im: Image.Image) -> torch.Tensor:
    """A PIL image of any mode as a float32 3 x H x W tensor in [0, 1] (see :func:`load_image`)."""
    # every array handed to torch is a fresh, writable copy (np.asarray of a PIL image is read-only,
    # and torch warns "The given NumPy array is not writable" when given one)
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.clip(np.array(im, dtype=np.float32) / 65535.0, 0.0, 1.0)
        return torch.from_numpy(np.repeat(arr[None], 3, axis=0))
    if mode == "F":
        arr = np.clip(np.array(im, dtype=np.float32), 0.0, 1.0)
        return torch.from_numpy(np.repeat(arr[None], 3, axis=0))
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.array(im, dtype=np.uint8, copy=True)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
