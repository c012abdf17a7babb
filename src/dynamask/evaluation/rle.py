"""Compressed COCO RLE strings read with NumPy: their run lengths, their pixel totals, a crop.

Why: pycocotools reads an RLE string without checking it (a bad one reads past the string or
writes past the mask), and decodes a mask only over the whole image. A results file is checked
here, all its strings at once; boundary AP decodes only the box of a mask (:mod:`.boundary`).

The format (pycocotools' ``rleToString``): each run length is a number written 5 bits a
character (``chr(48 + bits)``, bit 0x20 = more characters follow, bit 0x10 of the last one the
sign), and from the fourth number on each is stored as its difference to the number two before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["rle_totals", "rle_runs", "rle_runs_many", "decode_crop", "crop_from_runs"]


def rle_totals(counts: Sequence[str]) -> np.ndarray:
    """The pixel total (sum of the run lengths) of each compressed-RLE string, -1 where a string
    is malformed: a character outside ``'0'..'o'``, a number left unfinished at its end, one over
    60 bits, a negative run. Vectorised over all the strings (about 20 µs a string)."""
    n = len(counts)
    if n == 0:
        return np.zeros(0, np.int64)
    lens = np.fromiter((len(c) for c in counts), np.int64, count=n)
    try:
        raw = "".join(counts).encode("ascii")
    except UnicodeEncodeError:  # find the strings that are not ASCII, the rest is checked as usual
        ascii_ok = np.fromiter((c.isascii() for c in counts), bool, count=n)
        out = np.full(n, -1, np.int64)
        if ascii_ok.any():
            out[ascii_ok] = rle_totals([c for c, ok in zip(counts, ascii_ok) if ok])
        return out
    if not raw:  # only empty strings: no runs (a 0-pixel mask)
        return np.zeros(n, np.int64)
    runs, owner, bad = _runs_of_joined(np.frombuffer(raw, np.uint8), lens)
    totals = np.zeros(n, np.int64)
    has = np.flatnonzero(np.bincount(owner, minlength=n))
    if has.size:
        totals[has] = np.add.reduceat(runs, np.searchsorted(owner, has))
    return np.where(bad, -1, totals)


def rle_runs(counts: bytes) -> np.ndarray:
    """The run lengths (int64; background first) of one well-formed compressed-RLE string."""
    return rle_runs_many([counts])[0]


def rle_runs_many(counts: Sequence[bytes]) -> list[np.ndarray]:
    """:func:`rle_runs` of several well-formed strings, read together (one pass of NumPy calls)."""
    lens = np.fromiter((len(c) for c in counts), np.int64, count=len(counts))
    if not lens.sum():
        return [np.zeros(0, np.int64) for _ in counts]
    runs, owner, _ = _runs_of_joined(np.frombuffer(b"".join(counts), np.uint8), lens)
    return np.split(runs, np.searchsorted(owner, np.arange(1, len(counts))))


def _runs_of_joined(chars: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run lengths of the strings joined in ``chars`` (uint8; string ``i`` has ``lens[i]`` bytes):
    (runs, the string each run belongs to, a malformed flag per string). Work over the characters
    is in uint8 and over the numbers without sorting, so that half a million strings take seconds."""
    n = lens.size
    bad = np.zeros(n, bool)
    char_end = np.cumsum(lens)  # one past each string's last character
    owner_of = lambda pos: np.searchsorted(char_end, pos, side="right")  # noqa: E731 - string of a character
    invalid = (chars < 48) | (chars > 111)
    if invalid.any():
        bad[owner_of(np.flatnonzero(invalid))] = True
    v = chars - np.uint8(48)  # wraps for invalid characters (their strings are bad already)
    end_flag = (v & 0x20) == 0
    nonempty = lens > 0
    last = (char_end - 1)[nonempty]
    bad[np.flatnonzero(nonempty)[~end_flag[last]]] = True  # ends inside a number
    end_flag[last] = True  # numbers never run on into the next string (that string is bad already)
    ends = np.flatnonzero(end_flag)
    starts = np.concatenate(([0], ends[:-1] + 1))
    glen = ends - starts + 1
    per_string = np.zeros(n, np.int64)
    per_string[nonempty] = np.add.reduceat(end_flag, (char_end - lens)[nonempty], dtype=np.int64)
    gowner = np.repeat(np.arange(n), per_string)
    bad[gowner[glen > 12]] = True  # over 60 bits
    x = (v[starts] & 0x1F).astype(np.int64)
    for k in range(1, min(int(glen.max(initial=0)), 12)):  # 5 bits a character, least significant first
        sel = np.flatnonzero(glen > k)
        x[sel] += (v[starts[sel] + k] & 0x1F).astype(np.int64) << (5 * k)
    neg = np.flatnonzero(v[ends] & 0x10)
    x[neg] -= np.left_shift(1, 5 * np.minimum(glen[neg], 12))
    # number j of a string is a run for j < 3; from 3 on it is the difference to run j - 2: runs
    # are running sums over every other number from 1 on, restarted at each string
    first = np.concatenate(([0], np.cumsum(per_string)[:-1]))
    j = np.arange(ends.size) - np.repeat(first, per_string)
    z = np.where(j == 0, 0, x)
    sums = np.empty_like(z)
    sums[0::2], sums[1::2] = np.cumsum(z[0::2]), np.cumsum(z[1::2])  # per parity of the position
    last_of = np.minimum(first, max(ends.size - 1, 0))
    same = sums[last_of] if ends.size else np.zeros(n, np.int64)  # z[first] = 0: the sum before the string
    other = np.where(first > 0, sums[np.maximum(first - 1, 0)], 0) if ends.size else np.zeros(n, np.int64)
    base = np.where(j % 2 == 0, np.repeat(same, per_string), np.repeat(other, per_string))
    runs = np.where(j == 0, x, sums - base)
    bad[gowner[runs < 0]] = True
    return runs, gowner, bad


def crop_from_runs(runs: np.ndarray, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """Rows ``y..y+h`` and columns ``x..x+w`` (``box`` = x, y, w, h) of the mask with run lengths
    ``runs`` (column-major, image ``height`` pixels high), as a uint8 h×w array, without
    decoding the rest of the image."""
    x, y, w, h = box
    ends = np.cumsum(runs)
    lo, hi = x * height, (x + w) * height  # column-major: the box's columns are one stretch
    lengths = np.clip(ends, lo, hi) - np.clip(ends - runs, lo, hi)
    values = np.zeros(runs.size, np.uint8)
    values[1::2] = 1
    flat = np.repeat(values, lengths)
    if flat.size < hi - lo:  # runs that end before the last column: background
        flat = np.concatenate((flat, np.zeros(hi - lo - flat.size, np.uint8)))
    return np.ascontiguousarray(flat.reshape(w, height)[:, y : y + h].T)


def decode_crop(counts: bytes, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """:func:`crop_from_runs` of a compressed-RLE string."""
    return crop_from_runs(rle_runs(counts), height, box)
