"""A COCO file's ``images`` and ``annotations`` -> the flat records the dataset keeps.

:func:`parse_images` and :class:`AnnotationParser` read the parsed json in one pass each. Each
annotation's structure is checked (:func:`dynamask.coco_json.validate_annotation`) and a bad one
raises a :class:`DatasetError` naming the file, the annotation and the field, before any training
starts; an annotation that is well formed but cannot be trained on is skipped and counted by
reason (:data:`SKIP_REASONS`); the rest are kept still encoded (polygon coordinates or compressed
RLE) in :class:`~dynamask.data.records.InstanceRecords`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..coco_json import DatasetError, ann_where, validate_annotation
from ..cocotools import mask_utils
from .records import MAX_ABS_COORDINATE, InstanceRecords, RecordsBuilder, polygons_rasterise_nonempty

#: Reasons an annotation is left out of the training target (keys of ``skip_counts``).
SKIP_REASONS: tuple[str, ...] = (
    "unknown_category",  # category_id not listed in "categories"
    "unknown_image",  # image_id not listed in "images"
    "degenerate_box",  # bbox width/height < min_box_size (before or after clipping)
    "outside_image",  # bbox entirely outside the image
    "missing_segmentation",  # no (or null) "segmentation" field
    "empty_segmentation",  # no polygon with >= 3 points, or the mask rasterises empty
)


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict | None:
    """Convert a COCO ``segmentation`` (polygons, uncompressed or compressed RLE)
    to one compressed RLE of size (height, width).

    Polygons with fewer than 3 points (or an odd number of coordinates) are
    ignored; returns ``None`` when no usable polygon remains. Raises
    ``ValueError``/``TypeError`` for malformed content (the caller adds context).
    """
    if isinstance(seg, list):
        if not seg:
            return None
        if all(isinstance(p, dict) for p in seg):  # a list of RLE objects
            rles = [segmentation_to_rle(p, height, width) for p in seg]
            rles = [r for r in rles if r is not None]
            return mask_utils.merge(rles) if rles else None
        polys = []
        for p in seg:
            if not isinstance(p, (list, tuple)):
                raise TypeError(f"polygon must be a list of coordinates, got {type(p).__name__}")
            if len(p) < 6 or len(p) % 2:
                continue
            polys.append(p)
        if not polys:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    if isinstance(seg, dict):
        size = [int(v) for v in seg["size"]]
        if size != [int(height), int(width)]:
            raise ValueError(f"RLE size {size} does not match the image size [{height}, {width}]")
        counts = seg["counts"]
        if isinstance(counts, list):
            return mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        return {"size": size, "counts": counts}
    raise TypeError(f"unsupported segmentation type {type(seg).__name__}")


def _encoded_segmentation(seg: Any, height: int, width: int) -> tuple[list | None, dict | None]:
    """A COCO ``segmentation`` as what the records keep: ``(polygons, None)`` — the parts of >= 3
    points, the only ones :func:`segmentation_to_rle` rasterises — or ``(None, rle)``, one
    compressed RLE (bytes counts); ``(None, None)`` when nothing usable remains. Raises like
    :func:`segmentation_to_rle`; rasterises nothing for polygons."""
    if isinstance(seg, list) and not (seg and all(isinstance(p, dict) for p in seg)):
        polys = []
        for p in seg:
            if not isinstance(p, (list, tuple)):
                raise TypeError(f"polygon must be a list of coordinates, got {type(p).__name__}")
            if len(p) >= 6 and len(p) % 2 == 0:
                polys.append(p)
        return (polys or None), None
    rle = segmentation_to_rle(seg, height, width)
    if rle is not None and not isinstance(rle["counts"], bytes):
        rle = {"size": rle["size"], "counts": bytes(rle["counts"])}
    return None, rle


class ImageTable(NamedTuple):
    """The json ``images``, in file order, as flat arrays (see :mod:`dynamask.data.records` for why):
    ids, heights and widths (0 where the json lacks them), and the UTF-8 file names concatenated in
    ``names``, name ``p`` being ``names[name_offsets[p]:name_offsets[p + 1]]``."""

    ids: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    name_offsets: np.ndarray
    names: np.ndarray


def parse_images(images: list, path: str) -> ImageTable:
    """The (header-validated) json ``images`` of file ``path`` as an :class:`ImageTable`."""
    try:
        ids = np.array([img["id"] for img in images], dtype=np.int64)
        heights = np.array([img.get("height") or 0 for img in images], dtype=np.int64)
        widths = np.array([img.get("width") or 0 for img in images], dtype=np.int64)
    except OverflowError:
        raise DatasetError(f"{path}: field 'images[].id'/'width'/'height' out of the 64-bit range") from None
    names = [img["file_name"].encode("utf-8", "surrogatepass") for img in images]
    name_offsets = np.zeros(len(names) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in names], out=name_offsets[1:])
    return ImageTable(ids, heights, widths, name_offsets, np.frombuffer(b"".join(names), dtype=np.uint8).copy())


class AnnotationParser:
    """One pass over the ``annotations`` of file ``path``: validate each one's structure, skip and
    count the unusable ones (:attr:`skip_counts`, :attr:`num_crowd`), keep the rest encoded in flat
    buffers; then (``validate_masks``) drop and count the polygons that rasterise to nothing.

    With ``validate_masks=False`` a malformed segmentation is not an error here: its message is
    kept in :attr:`deferred_errors` (annotation index -> message) for when its image is loaded.
    """

    def __init__(self, path: str, min_box_size: float, validate_masks: bool) -> None:
        self.path = path
        self.min_box_size = min_box_size
        self.validate_masks = validate_masks
        self.skip_counts: dict[str, int] = {k: 0 for k in SKIP_REASONS}
        self.num_crowd = 0
        self.deferred_errors: dict[int, str] = {}

    def parse(
        self,
        annotations: list,
        images: ImageTable,
        image_hw: Callable[[int], tuple[int, int]],
        cat_id_to_label: dict[int, int],
        workers: int | None,
    ) -> InstanceRecords:
        """The records of ``annotations`` (each entry is released, set to None, once read).

        ``image_hw(pos)`` gives the size of image position ``pos`` where the json lacks it (read
        from the file); the sizes so found are written into ``images.heights``/``widths``. The
        emptiness check runs in ``workers`` processes where there are many polygons."""
        path, min_size = self.path, self.min_box_size
        pos_of_id = {int(i): p for p, i in enumerate(images.ids.tolist())}
        heights, widths = images.heights.tolist(), images.widths.tolist()
        builder = RecordsBuilder()
        # bound to locals: this loop runs once per annotation of the file (millions for COCO)
        validate, image_pos, to_label = validate_annotation, pos_of_id.get, cat_id_to_label.get
        add_polygon, skips = builder.add_polygon, self.skip_counts
        for idx in range(len(annotations)):
            ann = annotations[idx]
            annotations[idx] = None
            validate(path, idx, ann)
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            pos = image_pos(ann["image_id"])  # validated: an int
            if pos is None:
                skips["unknown_image"] += 1
                continue
            label = to_label(ann["category_id"])
            if label is None:
                skips["unknown_category"] += 1
                continue
            x, y, bw, bh = ann["bbox"]
            x, y, bw, bh = float(x), float(y), float(bw), float(bh)
            if bw < min_size or bh < min_size:
                skips["degenerate_box"] += 1
                continue
            h, w = heights[pos], widths[pos]
            if not h or not w:
                h, w = heights[pos], widths[pos] = image_hw(pos)
            x1, y1 = max(x, 0.0), max(y, 0.0)
            x2, y2 = min(x + bw, float(w)), min(y + bh, float(h))
            if x2 <= x1 or y2 <= y1:
                skips["outside_image"] += 1
                continue
            if x2 - x1 < min_size or y2 - y1 < min_size:
                skips["degenerate_box"] += 1
                continue
            seg = ann.get("segmentation")
            if seg is None:
                skips["missing_segmentation"] += 1
                continue
            if (
                type(seg) is list
                and len(seg) == 1
                and type(seg[0]) is list
                and len(seg[0]) >= 6
                and not len(seg[0]) % 2
            ):  # most objects: one polygon, kept as it is
                area = ann.get("area")
                try:
                    add_polygon(pos, idx, label, x1, y1, x2, y2, None if area is None else float(area), seg[0])
                    continue
                except TypeError:
                    pass  # the general path below words the error
            self._add_segmentation(builder, ann, idx, pos, label, (x1, y1, x2, y2), h, w)
        self._check_coordinates(builder)
        images.heights[:] = heights
        images.widths[:] = widths
        records = builder.build()
        del builder
        return self._drop_empty_polygons(records, images, workers)

    def _add_segmentation(
        self, builder: RecordsBuilder, ann: dict, idx: int, pos: int, label: int, box: tuple, h: int, w: int
    ) -> None:
        """The general path: several polygons, RLE, or a polygon the fast path refused. One that
        leaves nothing usable is counted; a malformed one raises (``validate_masks``) or is kept
        as an empty RLE with its message deferred."""
        area = ann.get("area")
        area = None if area is None else float(area)
        try:
            polygons, rle = _encoded_segmentation(ann["segmentation"], h, w)
            if rle is not None and self.validate_masks and int(mask_utils.area(rle)) == 0:
                polygons, rle = None, None
            if not polygons and rle is None:
                self.skip_counts["empty_segmentation"] += 1
                return
            builder.add(
                pos,
                idx,
                label,
                box,
                area,
                polygons=polygons,
                rle_counts=None if rle is None else rle["counts"],
            )
        except (ValueError, TypeError, KeyError) as e:
            message = f"{ann_where(self.path, idx, ann)}: invalid field 'segmentation': {e}"
            if self.validate_masks:
                raise DatasetError(message) from None
            # as before this layout: without validation a broken mask is an error when its image is
            # loaded (after the image's own checks, whose message says more when sizes disagree)
            self.deferred_errors[idx] = message
            builder.add(pos, idx, label, box, area, rle_counts=b"")

    def _check_coordinates(self, builder: RecordsBuilder) -> None:
        """Polygon coordinates must be finite and within what pycocotools' rasteriser can take."""
        bad = builder.first_bad_coordinate()
        if bad is not None:
            raise DatasetError(
                f"{self.path}: annotations[{builder.ann_index(bad)}]: invalid field 'segmentation': "
                f"coordinates must be finite numbers within ±{MAX_ABS_COORDINATE:g}"
            )

    def _drop_empty_polygons(self, records: InstanceRecords, images: ImageTable, workers: int | None):
        """With ``validate_masks``, drop (and count) the polygons that rasterise to an empty mask, in
        forked processes where there are many."""
        keep = np.ones(len(records), dtype=bool)
        if self.validate_masks:
            keep = polygons_rasterise_nonempty(
                records, images.heights[records.image_pos], images.widths[records.image_pos], workers
            )
            self.skip_counts["empty_segmentation"] += int((~keep).sum())
        return records.select(keep, len(images.ids))
