"""COCO detection results held in a few flat NumPy arrays (:class:`ResultSet`).

Why: a val2017-sized result set is 500,000 detections; as Python dicts (each with a box list, a
segmentation dict and its counts string) it is over a gigabyte and slow to walk. Here a
detection is a row: its ids, score, box, the bytes of its compressed RLE in one shared buffer,
like the ground-truth records of :mod:`dynamask.data.records`. The evaluator reads these arrays.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cocotools import mask_utils

__all__ = ["ResultSet", "ResultsBuilder", "results_from_entries"]


@dataclass
class ResultSet:
    """N detections. Detection ``i`` has the mask ``rle_bytes[rle_offsets[i]:rle_offsets[i + 1]]``
    (compressed RLE of a ``heights[i]`` × ``widths[i]`` image) where ``has_mask[i]``, and the box
    ``boxes[i]`` (x, y, w, h) where ``has_box[i]``; ``mask_resolution`` is -1 and ``mask_flops``
    NaN where the entry has none."""

    image_ids: np.ndarray  # int64 [N]
    category_ids: np.ndarray  # int64 [N]
    scores: np.ndarray  # float64 [N]
    boxes: np.ndarray  # float64 [N, 4]
    has_box: np.ndarray  # bool [N]
    has_mask: np.ndarray  # bool [N]
    heights: np.ndarray  # int64 [N]
    widths: np.ndarray  # int64 [N]
    rle_offsets: np.ndarray  # int64 [N + 1]
    rle_bytes: np.ndarray  # uint8 [B]
    mask_resolution: np.ndarray  # int64 [N]
    mask_flops: np.ndarray  # float64 [N]

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, f).nbytes) for f in self.__dataclass_fields__)

    def counts(self, i: int) -> bytes:
        """The compressed RLE string of detection ``i`` (bytes)."""
        return self.rle_bytes[int(self.rle_offsets[i]) : int(self.rle_offsets[i + 1])].tobytes()

    def entry(self, i: int) -> dict:
        """Detection ``i`` as a COCO results entry (``counts`` a str)."""
        e: dict[str, Any] = {
            "image_id": int(self.image_ids[i]),
            "category_id": int(self.category_ids[i]),
            "score": float(self.scores[i]),
        }
        if self.has_box[i]:
            e["bbox"] = [float(v) for v in self.boxes[i]]
        if self.has_mask[i]:
            e["segmentation"] = {
                "size": [int(self.heights[i]), int(self.widths[i])],
                "counts": self.counts(i).decode("ascii"),
            }
        if self.mask_resolution[i] >= 0:
            e["mask_resolution"] = int(self.mask_resolution[i])
        if not np.isnan(self.mask_flops[i]):
            e["mask_flops"] = float(self.mask_flops[i])
        return e

    def entries(self, rows: Iterable[int] | None = None) -> Iterator[dict]:
        """The detections (or those at ``rows``) as COCO results entries, one at a time."""
        for i in range(len(self)) if rows is None else rows:
            yield self.entry(int(i))

    def select(self, keep: np.ndarray) -> ResultSet:
        """The detections where ``keep`` (bool [N]) is True, in their order; masks copied compactly."""
        rows = np.flatnonzero(keep)
        lo, hi = self.rle_offsets[rows], self.rle_offsets[rows + 1]
        lengths = hi - lo
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        if lengths.sum():
            gather = np.repeat(lo - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
            rle_bytes = self.rle_bytes[gather]
        else:
            rle_bytes = np.zeros(0, np.uint8)
        return ResultSet(
            self.image_ids[rows],
            self.category_ids[rows],
            self.scores[rows],
            self.boxes[rows],
            self.has_box[rows],
            self.has_mask[rows],
            self.heights[rows],
            self.widths[rows],
            offsets,
            rle_bytes,
            self.mask_resolution[rows],
            self.mask_flops[rows],
        )


class ResultsBuilder:
    """Collects detections one at a time into growable typed arrays, then hands out a :class:`ResultSet`."""

    def __init__(self) -> None:
        self.ints = array("q")  # image_id, category_id, height, width, mask_resolution, flags
        self.floats = array("d")  # score, x, y, w, h, mask_flops
        self.offsets = array("q", [0])
        self.rle = bytearray()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def add(
        self,
        image_id: int,
        category_id: int,
        score: float,
        bbox: list[float] | None,
        size: list[int] | None,
        counts: bytes | None,
        mask_resolution: int | None = None,
        mask_flops: float | None = None,
    ) -> None:
        """One detection; ``bbox`` None without a box, ``counts`` None without a mask."""
        flags = (bbox is not None) | ((counts is not None) << 1)
        h, w = (int(size[0]), int(size[1])) if counts is not None else (0, 0)
        self.ints.extend((image_id, category_id, h, w, -1 if mask_resolution is None else mask_resolution, flags))
        x, y, bw, bh = bbox if bbox is not None else (0.0, 0.0, 0.0, 0.0)
        self.floats.extend((score, x, y, bw, bh, float("nan") if mask_flops is None else mask_flops))
        if counts is not None:
            self.rle += counts
        self.offsets.append(len(self.rle))

    def build(self) -> ResultSet:
        ints = np.frombuffer(self.ints, np.int64).reshape(-1, 6) if len(self.ints) else np.zeros((0, 6), np.int64)
        floats = (
            np.frombuffer(self.floats, np.float64).reshape(-1, 6) if len(self.floats) else np.zeros((0, 6), np.float64)
        )
        flags = ints[:, 5]
        return ResultSet(
            image_ids=ints[:, 0].copy(),
            category_ids=ints[:, 1].copy(),
            scores=floats[:, 0].copy(),
            boxes=floats[:, 1:5].copy(),
            has_box=(flags & 1) != 0,
            has_mask=(flags & 2) != 0,
            heights=ints[:, 2].copy(),
            widths=ints[:, 3].copy(),
            rle_offsets=np.frombuffer(self.offsets, np.int64).copy(),
            rle_bytes=np.frombuffer(self.rle, np.uint8),
            mask_resolution=ints[:, 4].copy(),  # no copy
            mask_flops=floats[:, 5].copy(),
        )


def compressed_counts(seg: Mapping[str, Any]) -> bytes:
    """The compressed RLE string (bytes) of an RLE ``{"size", "counts"}`` whose counts are a str,
    bytes or an uncompressed list of run lengths."""
    counts = seg["counts"]
    if isinstance(counts, str):
        return counts.encode("ascii")
    if isinstance(counts, (bytes, bytearray)):
        return bytes(counts)
    h, w = (int(v) for v in seg["size"])
    return mask_utils.frPyObjects({"size": [h, w], "counts": list(counts)}, h, w)["counts"]


def results_from_entries(entries: Iterable[Mapping[str, Any]]) -> ResultSet:
    """COCO results entries (already well formed: e.g. a model's, or a checked file's) → :class:`ResultSet`."""
    builder = ResultsBuilder()
    for r in entries:
        seg = r.get("segmentation")
        builder.add(
            int(r["image_id"]),
            int(r["category_id"]),
            float(r["score"]),
            [float(v) for v in r["bbox"]] if r.get("bbox") is not None else None,
            seg["size"] if seg is not None else None,
            compressed_counts(seg) if seg is not None else None,
            None if r.get("mask_resolution") is None else int(r["mask_resolution"]),
            None if r.get("mask_flops") is None else float(r["mask_flops"]),
        )
    return builder.build()
