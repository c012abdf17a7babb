"""Per-image annotation records held in a few flat NumPy buffers.

Why: a parsed COCO file is millions of small Python objects. A DataLoader worker is a forked copy
of the process, and merely reading a Python object writes its reference count, so a worker that
reads every record once (an epoch) ends up with a private copy of every page it touched — about
2 GiB per worker at COCO's size. NumPy buffers have no per-item objects: reading them writes
nothing, and forked workers keep sharing their pages.

The segmentation stays encoded — polygon coordinates (float64, exactly the values in the file)
or compressed RLE bytes — so that a mask is rasterised at its original resolution only when its
image is loaded (the mask branch samples its per-RoI targets from those masks, see
:mod:`dynamask.models.geometry`).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ..cocotools import mask_utils

__all__ = [
    "InstanceRecords",
    "RecordsBuilder",
    "polygons_rasterise_nonempty",
    "polygons_surely_nonempty",
    "PARALLEL_MIN_POLYGONS",
    "save_cache",
    "load_cache",
    "RECORD_FIELDS",
]

#: below this many polygon annotations the emptiness check runs in this process (forking costs more)
PARALLEL_MIN_POLYGONS = 20_000
#: pycocotools' ``area`` of a list fails beyond 255 RLEs (a uint8 length under NumPy 2); ask in chunks
_AREA_CHUNK = 255
_NAN = float("nan")
#: coordinates beyond this many pixels overflow pycocotools' integer rasteriser
MAX_ABS_COORDINATE = 1e8


@dataclass
class InstanceRecords:
    """The usable annotations of every image, grouped by image (file order within an image).

    Annotation ``k`` belongs to image position ``image_pos[k]``; the annotations of image position
    ``p`` are ``ann_offsets[p]:ann_offsets[p + 1]``. A polygon annotation has parts
    ``part_lo[k]:part_hi[k]``, part ``j`` being ``coords[coord_offsets[j]:coord_offsets[j + 1]]``
    (x0, y0, x1, y1, ...); an RLE annotation (``part_lo == part_hi``) has the compressed counts
    ``rle_bytes[rle_lo[k]:rle_hi[k]]``.
    """

    image_pos: np.ndarray  # int64 [A]
    ann_index: np.ndarray  # int64 [A]  position in the file's ``annotations`` list
    labels: np.ndarray  # int64 [A]  contiguous labels 1..K
    boxes: np.ndarray  # float32 [A, 4]  XYXY, clipped to the image
    areas: np.ndarray  # float64 [A]  the json ``area`` (NaN where ``has_area`` is False)
    has_area: np.ndarray  # bool [A]
    part_lo: np.ndarray  # int64 [A]
    part_hi: np.ndarray  # int64 [A]
    rle_lo: np.ndarray  # int64 [A]
    rle_hi: np.ndarray  # int64 [A]
    coord_offsets: np.ndarray  # int64 [P + 1]
    coords: np.ndarray  # float64 [C]
    rle_bytes: np.ndarray  # uint8 [B]
    ann_offsets: np.ndarray  # int64 [I + 1]

    def __len__(self) -> int:
        return int(self.image_pos.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, f).nbytes) for f in self.__dataclass_fields__)

    def polygons(self, k: int) -> list[np.ndarray]:
        """The polygon parts of annotation ``k`` (views into ``coords``; empty for an RLE)."""
        offs = self.coord_offsets
        return [self.coords[offs[j] : offs[j + 1]] for j in range(int(self.part_lo[k]), int(self.part_hi[k]))]

    def rle(self, k: int, height: int, width: int) -> dict:
        """Annotation ``k`` as one compressed RLE of size (height, width), as pycocotools makes it."""
        parts = self.polygons(k)
        if parts:
            return mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
        return {
            "size": [int(height), int(width)],
            "counts": self.rle_bytes[int(self.rle_lo[k]) : int(self.rle_hi[k])].tobytes(),
        }

    def select(self, keep: np.ndarray, num_images: int) -> InstanceRecords:
        """The annotations where ``keep`` is True, grouped by image (a stable sort: file order
        within an image); the part and byte buffers are shared, not copied."""
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(self.image_pos[idx], kind="stable")]
        pos = self.image_pos[idx]
        return InstanceRecords(
            image_pos=pos,
            ann_index=self.ann_index[idx],
            labels=self.labels[idx],
            boxes=self.boxes[idx],
            areas=self.areas[idx],
            has_area=self.has_area[idx],
            part_lo=self.part_lo[idx],
            part_hi=self.part_hi[idx],
            rle_lo=self.rle_lo[idx],
            rle_hi=self.rle_hi[idx],
            coord_offsets=self.coord_offsets,
            coords=self.coords,
            rle_bytes=self.rle_bytes,
            ann_offsets=np.searchsorted(pos, np.arange(num_images + 1), side="left").astype(np.int64),
        )


RECORD_FIELDS = tuple(f.name for f in fields(InstanceRecords))


class RecordsBuilder:
    """Collects annotations one at a time into growable typed arrays (8 bytes a coordinate, not
    the ~32 of a Python float in a list), then hands out :class:`InstanceRecords`."""

    #: per annotation, in ``ints``: image_pos, ann_index, label, part_lo, part_hi, rle_lo, rle_hi, has_area
    _INTS = 8
    #: per annotation, in ``floats``: x1, y1, x2, y2, area
    _FLOATS = 5

    def __init__(self) -> None:
        self.ints, self.floats = array("q"), array("d")
        self.coord_offsets, self.coords = array("q", [0]), array("d")
        self.rle_bytes = bytearray()

    def __len__(self) -> int:
        return len(self.ints) // self._INTS

    def add(
        self,
        image_pos: int,
        ann_index: int,
        label: int,
        box: Sequence[float],
        area: float | None,
        polygons: Sequence[Sequence[float]] | None = None,
        rle_counts: bytes | None = None,
    ) -> None:
        """One annotation: ``polygons`` (each a flat coordinate list of >= 6 numbers) or the compressed
        RLE ``rle_counts``. Raises ``TypeError`` for a coordinate that is not a number; then nothing of
        this annotation is kept."""
        coords, offsets = self.coords, self.coord_offsets
        first_part = len(offsets) - 1
        if polygons:
            first_coord = len(coords)
            try:
                for p in polygons:
                    coords.extend(p)  # TypeError for anything but numbers (a string, a list, null)
                    offsets.append(len(coords))
            except TypeError:
                del coords[first_coord:]
                del offsets[first_part + 1 :]
                raise
        lo = len(self.rle_bytes)
        if rle_counts is not None:
            self.rle_bytes += rle_counts
        self.ints.extend(
            (image_pos, ann_index, label, first_part, len(offsets) - 1, lo, len(self.rle_bytes), area is not None)
        )
        self.floats.extend((box[0], box[1], box[2], box[3], _NAN if area is None else area))

    def add_polygon(
        self,
        image_pos: int,
        ann_index: int,
        label: int,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        area: float | None,
        polygon: Sequence[float],
    ) -> None:
        """:meth:`add` for the common case, one polygon part (fewer calls per annotation)."""
        coords, offsets = self.coords, self.coord_offsets
        first = len(coords)
        try:
            coords.extend(polygon)
        except TypeError:
            del coords[first:]
            raise
        offsets.append(len(coords))
        n = len(offsets) - 1
        rle = len(self.rle_bytes)
        self.ints.extend((image_pos, ann_index, label, n - 1, n, rle, rle, area is not None))
        self.floats.extend((x1, y1, x2, y2, _NAN if area is None else area))

    def ann_index(self, k: int) -> int:
        return self.ints[k * self._INTS + 1]

    def first_bad_coordinate(self) -> int | None:
        """The index of the first annotation with a non-finite or absurdly large coordinate, or None."""
        coords = np.frombuffer(self.coords, dtype=np.float64) if len(self.coords) else np.zeros(0)
        if coords.size == 0 or (coords.min() >= -MAX_ABS_COORDINATE and coords.max() <= MAX_ABS_COORDINATE):
            return None  # (a NaN makes both comparisons False)
        bad = ~(np.abs(coords) <= MAX_ABS_COORDINATE)
        part = int(np.searchsorted(np.frombuffer(self.coord_offsets, dtype=np.int64), np.argmax(bad), side="right")) - 1
        part_hi = np.frombuffer(self.ints, dtype=np.int64).reshape(-1, self._INTS)[:, 4]
        return int(np.searchsorted(part_hi, part, side="right"))

    def build(self) -> InstanceRecords:
        """The collected annotations in append order (see :meth:`InstanceRecords.select`)."""
        ints = (
            np.frombuffer(self.ints, dtype=np.int64).reshape(-1, self._INTS)
            if len(self.ints)
            else np.zeros((0, self._INTS), np.int64)
        )
        floats = (
            np.frombuffer(self.floats, dtype=np.float64).reshape(-1, self._FLOATS)
            if len(self.floats)
            else np.zeros((0, self._FLOATS), np.float64)
        )
        # the coordinates are not copied: the array shares the builder's buffer (which it keeps alive)
        coords = np.frombuffer(self.coords, dtype=np.float64) if len(self.coords) else np.zeros(0)
        return InstanceRecords(
            image_pos=ints[:, 0].copy(),
            ann_index=ints[:, 1].copy(),
            labels=ints[:, 2].copy(),
            boxes=floats[:, :4].astype(np.float32),
            areas=floats[:, 4].copy(),
            has_area=ints[:, 7] != 0,
            part_lo=ints[:, 3].copy(),
            part_hi=ints[:, 4].copy(),
            rle_lo=ints[:, 5].copy(),
            rle_hi=ints[:, 6].copy(),
            coord_offsets=np.frombuffer(self.coord_offsets, dtype=np.int64).copy(),
            coords=coords,
            rle_bytes=np.frombuffer(bytes(self.rle_bytes), dtype=np.uint8).copy(),
            ann_offsets=np.zeros(1, np.int64),
        )


# --------------------------------------------------------------------------
# which polygon annotations rasterise to an empty mask
# --------------------------------------------------------------------------
_JOB: dict = {}  # what forked workers read (set before the fork; copy-on-write, never pickled)


def _nonempty_range(bounds: tuple) -> np.ndarray:
    """For annotations ``bounds[0]:bounds[1]`` of ``_JOB``: whether any polygon part covers a pixel
    (the union of the parts is empty exactly when every part is). The vectorised test first; the
    polygons it cannot vouch for are rasterised."""
    lo, hi = bounds
    job = _JOB
    part_lo, part_hi, offs, coords = job["part_lo"], job["part_hi"], job["coord_offsets"], job["coords"]
    heights, widths = job["heights"], job["widths"]
    out = _surely_nonempty(part_lo[lo:hi], part_hi[lo:hi], offs, coords, heights[lo:hi], widths[lo:hi])
    todo = np.flatnonzero(~out) + lo
    if todo.size == 0:
        return out
    keys = heights[todo].astype(np.int64) * (1 << 32) + widths[todo]
    for key in np.unique(keys):  # one pycocotools call per image size
        members = todo[keys == key]
        h, w = int(key >> 32), int(key & 0xFFFFFFFF)
        parts, owner = [], []
        for k in members.tolist():
            for j in range(int(part_lo[k]), int(part_hi[k])):
                parts.append(coords[offs[j] : offs[j + 1]])
                owner.append(k - lo)
        if not parts:
            continue
        rles = mask_utils.frPyObjects(parts, h, w)
        areas = np.concatenate(
            [
                np.asarray(mask_utils.area(rles[i : i + _AREA_CHUNK]), dtype=np.int64).reshape(-1)
                for i in range(0, len(rles), _AREA_CHUNK)
            ]
        )
        np.logical_or.at(out, np.asarray(owner), areas > 0)
    return out


def default_workers() -> int:
    """CPU cores for this process: its affinity set shared among the local ranks of a torchrun job."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, cores // max(1, local)))


def _concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> tuple:
    """(which range, position within it) for every element of the ranges laid end to end."""
    which = np.repeat(np.arange(lengths.size), lengths)
    first = np.cumsum(lengths) - lengths
    return which, np.arange(int(lengths.sum())) - first[which], first


def _centre_is_clear(cx, cy, x, y, dx, dy, seg2, vpart, starts, heights, widths, margin) -> np.ndarray:
    """Per part: candidate centre (cx, cy) inside (odd crossings of a ray to +x), at least ``margin``
    from every edge and in the image. Edge e runs from (x, y) by (dx, dy); ``vpart`` is its part."""
    with np.errstate(divide="ignore", invalid="ignore"):
        px, py = cx[vpart], cy[vpart]
        straddles = (y > py) != (y + dy > py)
        crossing = straddles & (px < x + (py - y) * dx / np.where(straddles, dy, 1.0))
        odd = (np.add.reduceat(crossing.astype(np.int64), starts) & 1).astype(bool)
        t = np.clip(((px - x) * dx + (py - y) * dy) / np.where(seg2 > 0, seg2, 1.0), 0.0, 1.0)
        d2 = (x + t * dx - px) ** 2 + (y + t * dy - py) ** 2
        clear = np.minimum.reduceat(d2, starts) >= margin * margin
    inside_image = (cx > 0) & (cx < widths) & (cy > 0) & (cy < heights)
    return odd & clear & inside_image


def _parts_surely_cover_a_pixel(
    coords: np.ndarray, lo: np.ndarray, hi: np.ndarray, heights: np.ndarray, widths: np.ndarray, margin: float
) -> np.ndarray:
    """For polygon parts ``coords[lo:hi]``: True where a pixel centre lies inside the part (even-odd
    rule) at least ``margin`` pixels from every edge, in the image. pycocotools sets pixel (i, j)
    when its centre (i + 0.5, j + 0.5) falls inside the polygon after each vertex moved by at most
    0.1 px (its 5x grid), so a centre 0.25 px inside is set, under either fill rule (an odd
    crossing count means a nonzero winding number too): True means the mask has a pixel. False
    decides nothing (the caller rasterises). Two candidate centres per part: the ones nearest the
    middle of its box and the mean of its vertices."""
    nverts = (hi - lo) // 2
    vpart, local, first = _concat_ranges(lo, nverts)
    xi = lo[vpart] + 2 * local
    x, y = coords[xi], coords[xi + 1]
    nxt = np.arange(x.size) + 1
    last = local == nverts[vpart] - 1
    nxt[last] = first[vpart[last]]
    x1, y1 = x[nxt], y[nxt]
    dx, dy = x1 - x, y1 - y
    seg2 = dx * dx + dy * dy
    starts = first
    mid = (
        np.floor((np.minimum.reduceat(x, starts) + np.maximum.reduceat(x, starts)) / 2) + 0.5,
        np.floor((np.minimum.reduceat(y, starts) + np.maximum.reduceat(y, starts)) / 2) + 0.5,
    )
    ok = _centre_is_clear(mid[0], mid[1], x, y, dx, dy, seg2, vpart, starts, heights, widths, margin)
    if not ok.all():  # a second candidate, the vertex mean, for the parts the first failed
        retry = np.flatnonzero(~ok)
        keep = ~ok[vpart]
        sub_starts = np.cumsum(nverts[retry]) - nverts[retry]
        mean = (
            np.floor(np.add.reduceat(x, starts)[retry] / nverts[retry]) + 0.5,
            np.floor(np.add.reduceat(y, starts)[retry] / nverts[retry]) + 0.5,
        )
        sub_vpart = np.repeat(np.arange(retry.size), nverts[retry])
        ok[retry] = _centre_is_clear(
            mean[0],
            mean[1],
            x[keep],
            y[keep],
            dx[keep],
            dy[keep],
            seg2[keep],
            sub_vpart,
            sub_starts,
            heights[retry],
            widths[retry],
            margin,
        )
    return ok


def polygons_surely_nonempty(
    records: InstanceRecords, heights: np.ndarray, widths: np.ndarray, margin: float = 0.25
) -> np.ndarray:
    """Per annotation: True where one of its polygon parts surely rasterises to at least a pixel
    (see :func:`_parts_surely_cover_a_pixel`) — a vectorised test, ~100x cheaper than rasterising."""
    return _surely_nonempty(
        records.part_lo,
        records.part_hi,
        records.coord_offsets,
        records.coords,
        np.asarray(heights),
        np.asarray(widths),
        margin,
    )


def _surely_nonempty(
    part_lo, part_hi, coord_offsets, coords, heights, widths, margin: float = 0.25, chunk_vertices: int = 1 << 20
) -> np.ndarray:
    out = np.zeros(part_lo.size, dtype=bool)
    nparts = part_hi - part_lo
    ann_of_part, local, _ = _concat_ranges(part_lo, nparts)
    part = part_lo[ann_of_part] + local
    lo, hi = coord_offsets[part], coord_offsets[part + 1]
    part_h, part_w = heights[ann_of_part], widths[ann_of_part]
    ends = np.cumsum((hi - lo) // 2)
    begin = 0
    while begin < part.size:  # in pieces of about a million vertices: bounded temporaries
        end = max(begin + 1, int(np.searchsorted(ends, (ends[begin - 1] if begin else 0) + chunk_vertices)))
        sl = slice(begin, end)
        ok = _parts_surely_cover_a_pixel(coords, lo[sl], hi[sl], part_h[sl], part_w[sl], margin)
        out[ann_of_part[sl][ok]] = True
        begin = end
    return out


def polygons_rasterise_nonempty(
    records: InstanceRecords, heights: np.ndarray, widths: np.ndarray, workers: int | None = None
) -> np.ndarray:
    """For every polygon annotation of ``records`` (RLE ones give True): whether pycocotools'
    rasteriser gives it at least one pixel at its image's size (``heights``/``widths`` per
    annotation). Rasterising is the one costly step of an exact emptiness check (~30 µs a
    polygon): it runs only for the polygons that :func:`polygons_surely_nonempty` cannot vouch
    for. With many polygons both steps run in forked processes that share the buffers."""
    n = len(records)
    is_poly = records.part_hi > records.part_lo
    out = np.ones(n, dtype=bool)
    polys = np.flatnonzero(is_poly)
    if polys.size == 0:
        return out
    _JOB.update(
        part_lo=records.part_lo[polys],
        part_hi=records.part_hi[polys],
        coord_offsets=records.coord_offsets,
        coords=records.coords,
        heights=np.asarray(heights)[polys],
        widths=np.asarray(widths)[polys],
    )
    try:
        workers = default_workers() if workers is None else max(1, int(workers))
        m = int(polys.size)
        pieces = None
        if workers > 1 and m >= PARALLEL_MIN_POLYGONS and "fork" in multiprocessing.get_all_start_methods():
            step = -(-m // (4 * workers))  # a few pieces per worker evens out their speed
            bounds = [(i, min(m, i + step)) for i in range(0, m, step)]
            try:
                with multiprocessing.get_context("fork").Pool(workers) as pool:
                    pieces = pool.map(_nonempty_range, bounds)
            except (AssertionError, OSError):  # e.g. inside a daemonic DataLoader worker: no children allowed
                pieces = None
        if pieces is None:
            pieces = [_nonempty_range((0, m))]
        out[polys] = np.concatenate(pieces)
    finally:
        _JOB.clear()
    return out


# --------------------------------------------------------------------------
# a cache of parsed records
# --------------------------------------------------------------------------
#: bump when what the cache holds, or how it is computed, changes
CACHE_FORMAT = 1


def save_cache(directory: Path, arrays: dict, meta: dict) -> bool:
    """Write ``arrays`` (name -> ndarray, one ``.npy`` each) and ``meta`` (json) to ``directory``
    atomically (a temporary folder renamed into place; a concurrent writer's copy wins). Returns
    whether this call wrote it; failing to write a cache is never an error."""
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for name, value in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(value), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(dict(meta, format=CACHE_FORMAT)))
        os.rename(tmp, directory)
        return True
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def load_cache(directory: Path, names: Sequence[str]) -> tuple | None:
    """``(arrays, meta)`` from :func:`save_cache`, memory-mapped copy-on-write (pages shared by
    every process that maps them, ranks and workers alike); None when absent or unreadable."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        arrays = {name: np.load(directory / f"{name}.npy", mmap_mode="c", allow_pickle=False) for name in names}
    except (OSError, ValueError):
        return None
    return arrays, meta
