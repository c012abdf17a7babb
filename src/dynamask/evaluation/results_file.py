"""A COCO results file read and checked into a :class:`~.results.ResultSet`, entry by entry.

Why: ``json.load`` of a val2017-sized results file (250 MB) builds half a million dicts at once
(over 2 GB with the text). Here the file is read in pieces and each entry is checked and stored
as a row of flat arrays as soon as it is parsed, so no more than a piece of the text and one
entry are ever Python objects. Bad input is a :class:`~dynamask.errors.DynaMaskError` naming the
file, the entry and the field; a file that is not plain UTF-8 JSON is read whole, as before, so
that its message is the same.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..cocotools import mask_utils
from ..errors import DynaMaskError
from .results import ResultsBuilder, ResultSet
from .rle import rle_totals

__all__ = ["read_results_file", "load_results_file"]

#: bytes read at a time
PIECE_BYTES = 16 << 20
#: characters kept ahead of the parser (more than an entry needs; a longer one is read on)
MARGIN_CHARS = 1 << 20
#: strings checked together by :func:`~.rle.rle_totals`
CHECK_CHUNK = 4096
_SPACE = re.compile(r"[ \t\n\r]*")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_whole(path: str) -> Any:
    """The file parsed in one piece, with the messages of a file that is missing, unreadable or bad JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise DynaMaskError(f"{path}: results file not found") from None
    except IsADirectoryError:
        raise DynaMaskError(f"{path}: is a folder, not a results file") from None
    except OSError as e:
        raise DynaMaskError(f"{path}: cannot read the results file: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise DynaMaskError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DynaMaskError(f"{path}: not UTF-8 text (byte {e.start}): {e.reason}") from None


class _NotStreamable(Exception):
    """The file is not a plain UTF-8 JSON list: read it whole for the right message."""


def _stream_list(path: str) -> Iterator[Any]:
    """The entries of the JSON list in ``path``, parsed one at a time from pieces of the file."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    try:
        f = open(path, "rb")
    except OSError:
        raise _NotStreamable from None
    with f:
        buf, pos, eof = "", 0, False

        def more() -> None:
            nonlocal buf, pos, eof
            piece = f.read(PIECE_BYTES)
            eof = not piece
            try:
                buf = buf[pos:] + utf8.decode(piece, final=eof)
            except UnicodeDecodeError:
                raise _NotStreamable from None
            pos = 0

        def skip_space() -> None:
            nonlocal pos
            while True:
                pos = _SPACE.match(buf, pos).end()
                if pos < len(buf) or eof:
                    return
                more()

        more()
        skip_space()
        if buf[pos : pos + 1] != "[":
            raise _NotStreamable
        pos += 1
        skip_space()
        if buf[pos : pos + 1] == "]":
            pos += 1
        else:
            while True:
                while len(buf) - pos < MARGIN_CHARS and not eof:  # a whole entry in the buffer
                    more()
                try:
                    entry, pos = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if eof:
                        raise _NotStreamable from None
                    more()  # an entry longer than the margin: read on
                    continue
                yield entry
                skip_space()
                c = buf[pos : pos + 1]
                pos += 1
                if c == "]":
                    break
                if c != ",":
                    raise _NotStreamable
                skip_space()
        skip_space()
        if pos < len(buf):  # anything after the list
            raise _NotStreamable


class _Checker:
    """Checks entries against the ground truth and stores the good ones (today's messages)."""

    def __init__(self, path: str, gt: Mapping[str, Any], gt_name: str) -> None:
        self.path, self.gt_name = path, gt_name
        self.sizes = {int(img["id"]): (img.get("height"), img.get("width")) for img in gt.get("images", [])}
        self.cat_ids = {int(c["id"]) for c in gt.get("categories", [])}
        self.unknown = {"image_id": [None, 0], "category_id": [None, 0]}  # (first entry, its value), how many
        self.builder = ResultsBuilder()
        self.pending: list[tuple[int, str, int, int]] = []  # (entry, counts, h, w) not yet summed
        self.bad_rle: tuple[int, int, int, int] | None = None  # entry, total, h, w

    def add(self, i: int, r: Any) -> None:
        where = f"{self.path}: entry {i}"
        if not isinstance(r, dict):
            raise DynaMaskError(f"{where} must be an object, got {type(r).__name__}")
        for key in ("image_id", "category_id", "score"):
            if key not in r:
                raise DynaMaskError(f"{where}: missing field '{key}'")
        for key in ("image_id", "category_id"):
            if not _is_int(r[key]):
                raise DynaMaskError(f"{where}: field '{key}' must be an integer, got {r[key]!r}")
        if not _is_finite_number(r["score"]):
            raise DynaMaskError(f"{where}: field 'score' must be a finite number, got {r['score']!r}")
        if "bbox" not in r and "segmentation" not in r:
            raise DynaMaskError(f"{where}: needs a field 'bbox' or 'segmentation' (or both)")
        if "bbox" in r:
            b = r["bbox"]
            if not (
                isinstance(b, list) and len(b) == 4 and all(_is_finite_number(v) for v in b) and b[2] >= 0 and b[3] >= 0
            ):
                raise DynaMaskError(
                    f"{where}: field 'bbox' must be [x, y, width, height] (4 finite numbers, "
                    f"width and height >= 0), got {b!r}"
                )
        for key, known in (("image_id", self.sizes), ("category_id", self.cat_ids)):
            if r[key] not in known:
                seen = self.unknown[key]
                seen[0] = seen[0] or (i, r[key])
                seen[1] += 1
                return
        size, counts = None, None
        if "segmentation" in r:
            size, counts = self._checked_rle(r["segmentation"], i, r["image_id"])
        if r.get("mask_resolution") is not None and not _is_int(r["mask_resolution"]):
            raise DynaMaskError(f"{where}: field 'mask_resolution' must be an integer, got {r['mask_resolution']!r}")
        if r.get("mask_flops") is not None and not _is_finite_number(r["mask_flops"]):
            raise DynaMaskError(f"{where}: field 'mask_flops' must be a finite number, got {r['mask_flops']!r}")
        self.builder.add(
            r["image_id"],
            r["category_id"],
            float(r["score"]),
            [float(v) for v in r["bbox"]] if "bbox" in r else None,
            size,
            counts,
            r.get("mask_resolution"),
            r.get("mask_flops"),
        )

    def _checked_rle(self, seg: Any, i: int, image_id: int) -> tuple[list, bytes]:
        where = f"{self.path}: entry {i}"
        if isinstance(seg, list):
            raise DynaMaskError(
                f"{where}: field 'segmentation' is a polygon list; a results file holds masks as "
                f'RLE objects {{"size": [h, w], "counts": ...}}'
            )
        if not isinstance(seg, dict) or "size" not in seg or "counts" not in seg:
            raise DynaMaskError(
                f"{where}: field 'segmentation' must be an RLE object with 'size' and 'counts', got {str(seg)[:80]}"
            )
        hw = seg["size"]
        if not (isinstance(hw, list) and len(hw) == 2 and all(_is_int(v) and v >= 0 for v in hw)):
            raise DynaMaskError(f"{where}: field 'segmentation.size' must be [height, width], got {hw!r}")
        h, w = self.sizes[image_id]
        if h and w and [int(h), int(w)] != hw:
            raise DynaMaskError(
                f"{where}: field 'segmentation.size' {hw} is not the size of image {image_id} "
                f"in {self.gt_name} ([height, width] = [{h}, {w}])"
            )
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE: compress it (pycocotools reads only compressed RLE)
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
                raise DynaMaskError(
                    f"{where}: field 'segmentation.counts' (uncompressed RLE) must be non-negative "
                    f"integers summing to height x width = {hw[0] * hw[1]}"
                )
            return hw, mask_utils.frPyObjects(seg, hw[0], hw[1])["counts"]
        if not isinstance(counts, str):
            raise DynaMaskError(
                f"{where}: field 'segmentation.counts' must be a string (compressed RLE) or a "
                f"list of integers, got {type(counts).__name__}"
            )
        self.pending.append((i, counts, hw[0], hw[1]))
        if len(self.pending) >= CHECK_CHUNK:
            self.check_pending()
        return hw, counts.encode("utf-8", "surrogatepass")

    def check_pending(self) -> None:
        """Sum the runs of the strings not yet checked; remember the first that does not cover its mask."""
        if self.pending and self.bad_rle is None:
            totals = rle_totals([c for _, c, _, _ in self.pending])
            for (i, _, h, w), total in zip(self.pending, totals.tolist()):
                if total != h * w:
                    self.bad_rle = (i, total, h, w)
                    break
        self.pending = []

    def finish(self, n: int) -> ResultSet:
        for key, what in (("image_id", "an image"), ("category_id", "a category")):
            first, count = self.unknown[key]
            if first is not None:
                raise DynaMaskError(
                    f"{self.path}: entry {first[0]}: field '{key}' {first[1]} is not {what} of "
                    f"{self.gt_name} ({count} of {n} entries have {key}s that are not)"
                )
        self.check_pending()
        if self.bad_rle is not None:
            i, total, h, w = self.bad_rle
            covers = "is malformed" if total < 0 else f"has runs over {total} pixels"
            raise DynaMaskError(
                f"{self.path}: entry {i}: field 'segmentation.counts' is not a compressed RLE of a "
                f"{h}x{w} mask (it {covers}, not {h * w})"
            )
        return self.builder.build()


def read_results_file(path: str | os.PathLike, gt: Mapping[str, Any], gt_name: str = "the ground truth") -> ResultSet:
    """Read and check a COCO results file against the ground truth ``gt`` (a COCO dict).

    A results file is a JSON list of detections, each an object with ``image_id`` and
    ``category_id`` (integers of the gt's images and categories), ``score`` (a finite number) and
    ``bbox`` [x, y, w, h] and/or ``segmentation`` (an RLE ``{"size": [h, w], "counts": ...}`` of
    the image's size; uncompressed RLE counts are compressed here); ``mask_resolution`` and
    ``mask_flops``, when present, are an integer and a number. Anything else is a
    :class:`DynaMaskError` naming the file, the entry and the field.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DynaMaskError(f"{path}: is a folder, not a results file")
    checker = _Checker(path, gt, gt_name)
    n, failure = 0, None
    try:
        for n, entry in enumerate(_stream_list(path), start=1):
            if failure is None:
                try:
                    checker.add(n - 1, entry)
                except DynaMaskError as exc:  # raised once the whole file is known to be JSON (as before)
                    failure = exc
    except _NotStreamable:
        data = _read_whole(path)  # the message of a bad file, or the entries of an unusual encoding
        if not isinstance(data, list):
            hint = (
                " (this one has 'annotations': a ground-truth file? The ground truth goes to --gt)"
                if isinstance(data, dict) and "annotations" in data
                else ""
            )
            raise DynaMaskError(
                f"{path}: a COCO results file is a JSON list of detections, got a JSON "
                f"{'object' if isinstance(data, dict) else type(data).__name__}{hint}"
            ) from None
        checker, failure = _Checker(path, gt, gt_name), None
        for i, entry in enumerate(data):
            checker.add(i, entry)
        n = len(data)
    if failure is not None:
        raise failure
    return checker.finish(n)


def load_results_file(path: str | os.PathLike, gt: Mapping[str, Any], gt_name: str = "the ground truth") -> list[dict]:
    """:func:`read_results_file` as a list of COCO results entries (dicts; ``counts`` a str)."""
    return list(read_results_file(path, gt, gt_name).entries())
