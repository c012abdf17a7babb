"""COCO-format instance-segmentation dataset.

:func:`load_coco_json` parses an annotation file and validates its structure in
one fast pass, raising :class:`DatasetError` (naming the file and the field)
before any training starts. :class:`CocoInstanceDataset` turns it into
``(image, target)`` samples for torchvision detection models. Its parts: the records
(:mod:`~dynamask.data.coco_annotations`, :mod:`~dynamask.data.coco_cache`) and the image
files (:mod:`~dynamask.data.images`), whose public names stay importable from here.

Annotations that cannot be used for training are skipped and counted in
``dataset.skip_counts`` (see :data:`SKIP_REASONS`); a single warning on the
``dynamask.data`` logger summarises them. Crowd annotations are never part of
the training target (they matter only to COCO evaluation, which reads the json).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from ..coco_json import DatasetError, load_coco_json
from ..coco_json import gc_paused as _gc_paused
from ..coco_json import read_json as _read_json
from ..coco_json import validate_header as _validate_header
from ..cocotools import mask_utils
from .coco_annotations import SKIP_REASONS, AnnotationParser, parse_images, segmentation_to_rle
from .coco_cache import records_cache_key, write_cache_entry
from .images import (  # noqa: F401  (EXIF_ORIENTATION_TAG and exif_orientation: re-exported, their old path)
    EXIF_ORIENTATION_TAG,
    exif_orientation,
    load_image,
    pil_image_to_tensor,
    upright_size,
)
from .records import RECORD_FIELDS, InstanceRecords, load_cache

__all__ = [
    "DatasetError",
    "SKIP_REASONS",
    "CocoInstanceDataset",
    "collate_fn",
    "load_coco_json",
    "load_image",
    "segmentation_to_rle",
]

logger = logging.getLogger("dynamask.data")

#: the dataset's per-image buffers (the cache holds them beside the records')
_IMAGE_FIELDS = ("_image_ids", "_heights", "_widths", "_name_offsets", "_names")


def _decode(rle: dict) -> np.ndarray:
    """``pycocotools.mask.decode`` without its NumPy-2 ``__array__`` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


class CocoInstanceDataset(torch.utils.data.Dataset):
    """Instance-segmentation samples from a COCO annotation file.

    ``dataset[i]`` is ``(image, target)``: ``image`` a ``tv_tensors.Image``
    (float32, 3 x H x W, [0, 1]); ``target`` a dict with ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY float32, clipped to the image),
    ``labels`` (int64, contiguous 1..K), ``masks`` (``tv_tensors.Mask`` uint8
    N x H x W), ``image_id`` (int), ``iscrowd`` (int64 zeros; crowd annotations
    are excluded) and ``area`` (float32, the json ``area`` or the mask area).

    Labels: categories sorted by id map to 1..K; ``cat_ids[label - 1]`` is the
    category id, ``cat_id_to_label`` the inverse, ``class_names[label - 1]``
    the name.

    Memory: the file is parsed once and released annotation by annotation; what is kept is a few
    flat NumPy buffers (:class:`~dynamask.data.records.InstanceRecords`: boxes, labels, areas and
    each segmentation still encoded — polygon coordinates or compressed RLE bytes), about 60 MiB
    for a tenth of COCO train2017. DataLoader workers share those pages instead of copying them
    (reading Python objects writes their reference counts; reading NumPy buffers writes nothing).
    The ground truth that evaluation needs (:attr:`coco`) is read from the file on first use.

    EXIF orientation: a photo is loaded as stored unless its json ``width``/``height`` give the
    size it has upright per its EXIF orientation tag (annotation tools that show photos upright,
    such as labelme or CVAT, write that size); then it is loaded upright (logged once per dataset,
    ids in ``exif_rotated_ids``). When neither size fits, loading raises a :class:`DatasetError`
    naming the file, both sizes and the json fields; :meth:`check_image_sizes` does this check
    for all images up front.

    Args:
        ann_file: COCO json path.
        image_dir: folder that ``file_name`` is relative to.
        transforms: callable ``(image, target) -> (image, target)``.
        keep_empty: keep images with no usable non-crowd annotation.
        min_box_size: boxes narrower/shorter than this (in pixels, before or
            after clipping to the image) are skipped as ``degenerate_box``.
        validate_masks: find at construction every segmentation that rasterises to an empty mask,
            so that ``skip_counts`` are exact before training. A vectorised test vouches for most
            polygons (a pixel centre clearly inside) and only the rest are rasterised, in forked
            processes when there are many. When False only the cheap checks run up front (no
            polygon with >= 3 points); masks that rasterise empty are dropped when the image is
            loaded (and counted in that process's ``skip_counts`` only, so not in the main
            process when a DataLoader uses workers), and a malformed segmentation is reported then.
        categories: (category id, name) pairs that fix the label space instead of the file's
            categories — label i + 1 is ``categories[i]`` — e.g. torchvision's COCO labels, where
            label = COCO category id; annotations of other ids are skipped as ``unknown_category``.
        workers: processes for the emptiness check (default: this process's cores, shared among
            the local ranks of a torchrun job; 1 = no fork).
        cache_dir: keep the parsed records here (``records-<key>/``, one ``.npy`` file per buffer,
            keyed on the file's SHA-256 and these arguments) and load them from there next time,
            memory-mapped: every process that maps them shares the pages. ``cache_hit`` says
            whether this construction was served from it.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        transforms: Callable | None = None,
        keep_empty: bool = True,
        min_box_size: float = 1.0,
        validate_masks: bool = True,
        categories: Sequence[tuple[int, str]] | None = None,
        workers: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.ann_file = str(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.keep_empty = bool(keep_empty)
        self.min_box_size = float(min_box_size)
        self.validate_masks = bool(validate_masks)
        self.cache_hit = False
        self._coco = None
        self.num_missing_files = 0
        # ids of the images loaded upright (EXIF orientation applied; see _use_exif_orientation)
        self.exif_rotated_ids: set = set()
        self._exif_logged = False

        cache_entry = None
        if cache_dir is not None:
            key = records_cache_key(self.ann_file, self.image_dir, self.min_box_size, self.validate_masks, categories)
            cache_entry = Path(cache_dir) / f"records-{key}"
            cached = load_cache(cache_entry, RECORD_FIELDS + _IMAGE_FIELDS)
            self.cache_hit = cached is not None
            if cached is not None:
                self._restore(*cached)
                self._finish()
                return
        data = _read_json(self.ann_file)
        _validate_header(data, self.ann_file)

        if categories is not None:  # a label space fixed from outside (e.g. torchvision's COCO labels)
            cats = [{"id": int(i), "name": str(n)} for i, n in categories]
        else:
            cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: list[int] = [int(c["id"]) for c in cats]
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}

        # the images, in file order, as flat arrays (see dynamask.data.records for why)
        table = parse_images(data["images"], self.ann_file)
        self._image_ids, self._heights, self._widths = table.ids, table.heights, table.widths
        self._name_offsets, self._names = table.name_offsets, table.names

        annotations = data["annotations"]
        self._num_annotations = len(annotations)
        del data  # each annotation is released once read (the parsed file is not kept alive)
        parser = AnnotationParser(self.ann_file, self.min_box_size, self.validate_masks)
        with _gc_paused():  # the pass only releases objects
            self._records = parser.parse(annotations, table, self._image_hw_at, self.cat_id_to_label, workers)
        del annotations
        self.skip_counts, self.num_crowd = parser.skip_counts, parser.num_crowd
        self._deferred_errors = parser.deferred_errors  # annotation index -> message (validate_masks=False)
        if cache_entry is not None:
            self._save(cache_entry)
        self._finish()

    def _finish(self) -> None:
        counts = np.diff(self._records.ann_offsets)
        self._order = (
            np.arange(len(self._image_ids), dtype=np.int64)
            if self.keep_empty
            else np.flatnonzero(counts > 0).astype(np.int64)
        )
        self.num_dropped_images = len(self._image_ids) - len(self._order)
        total = sum(self.skip_counts.values())
        if total:
            details = ", ".join(f"{k}={v}" for k, v in self.skip_counts.items() if v)
            logger.warning(
                "%s: skipped %d of %d annotations (%s)", self.ann_file, total, self._num_annotations, details
            )

    # ---------------------------------------------------------------- cache
    def _save(self, entry: Path) -> None:
        arrays = {name: getattr(self._records, name) for name in RECORD_FIELDS}
        arrays.update({name: getattr(self, name) for name in _IMAGE_FIELDS})
        meta = {
            "cat_ids": self.cat_ids,
            "class_names": self.class_names,
            "skip_counts": self.skip_counts,
            "num_crowd": self.num_crowd,
            "num_annotations": self._num_annotations,
            "deferred_errors": {str(k): v for k, v in self._deferred_errors.items()},
        }
        write_cache_entry(entry, arrays, meta, self.ann_file)

    def _restore(self, arrays: dict, meta: dict) -> None:
        self._records = InstanceRecords(**{name: arrays[name] for name in RECORD_FIELDS})
        for name in _IMAGE_FIELDS:
            setattr(self, name, arrays[name])
        self.cat_ids = [int(c) for c in meta["cat_ids"]]
        self.class_names = [str(n) for n in meta["class_names"]]
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.skip_counts = {k: int(meta["skip_counts"].get(k, 0)) for k in SKIP_REASONS}
        self.num_crowd = int(meta["num_crowd"])
        self._num_annotations = int(meta["num_annotations"])
        self._deferred_errors = {int(k): str(v) for k, v in meta["deferred_errors"].items()}

    # ---------------------------------------------------------------- image files
    def _file_name_at(self, pos: int) -> str:
        lo, hi = self._name_offsets[pos], self._name_offsets[pos + 1]
        return self._names[lo:hi].tobytes().decode("utf-8", "surrogatepass")

    def _image_path_at(self, pos: int) -> Path:
        return self.image_dir / self._file_name_at(pos)

    def _describe_image_at(self, pos: int) -> str:
        return (
            f"image file {str(self._image_path_at(pos))!r} (field 'file_name' = {self._file_name_at(pos)!r} "
            f"of image id {int(self._image_ids[pos])} in {self.ann_file})"
        )

    def _image_hw_at(self, pos: int) -> tuple[int, int]:
        """(height, width) from the json, else from the image file's header (read once, then kept)."""
        h, w = int(self._heights[pos]), int(self._widths[pos])
        if h and w:
            return h, w
        image_id = int(self._image_ids[pos])
        try:
            with Image.open(self._image_path_at(pos)) as im:
                w, h = im.size
        except FileNotFoundError:
            raise DatasetError(
                f"{self.ann_file}: image id {image_id} has no 'width'/'height' fields and "
                f"its {self._describe_image_at(pos)} does not exist"
            ) from None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DatasetError(
                f"{self.ann_file}: image id {image_id} has no 'width'/'height' fields and "
                f"its {self._describe_image_at(pos)} cannot be read: {e}"
            ) from None
        self._heights[pos], self._widths[pos] = h, w
        return int(h), int(w)

    # ---------------------------------------------------------------- public
    @property
    def coco(self):
        """A ``pycocotools.coco.COCO`` over the (unfiltered) json, read from the file on first use
        (the dataset itself keeps only compact records; evaluation needs the ground truth on one
        process, not in every DataLoader worker)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = load_coco_json(self.ann_file)
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def release_ground_truth(self) -> None:
        """Drop the parsed json behind :attr:`coco` (read again on the next use): evaluation during
        training needs it for a moment, and DataLoader workers forked later would inherit it."""
        self._coco = None

    @property
    def ids(self) -> list[int]:
        """The image ids of the samples, in order (a new list each call)."""
        return self._image_ids[self._order].tolist()

    @property
    def records(self) -> InstanceRecords:
        """The usable annotations of every image of the file in flat buffers (see
        :class:`~dynamask.data.records.InstanceRecords`); sample ``i`` is image position
        ``sample_positions[i]``."""
        return self._records

    @property
    def sample_positions(self) -> np.ndarray:
        return self._order

    def annotation_indices(self, index: int) -> np.ndarray:
        """Positions in the file's ``annotations`` list of sample ``index``'s target instances, in
        target order (e.g. to look up fields the target does not carry)."""
        pos = int(self._order[index])
        r = self._records
        return r.ann_index[r.ann_offsets[pos] : r.ann_offsets[pos + 1]].copy()

    def use_categories(self, categories: Sequence[tuple[int, str]]) -> None:
        """Switch to a label space fixed from outside (see the ``categories`` argument), after
        construction; every category of the file must be among ``categories``."""
        new_ids = [int(i) for i, _ in categories]
        to_label = {cid: k + 1 for k, cid in enumerate(new_ids)}
        outside = [cid for cid in self.cat_ids if cid not in to_label]
        if outside:
            raise ValueError(f"{self.ann_file}: categories {outside[:5]} are not in the requested label space")
        lookup = np.array([0] + [to_label[cid] for cid in self.cat_ids], dtype=np.int64)
        self._records.labels = lookup[self._records.labels]
        self.cat_ids = new_ids
        self.class_names = [str(n) for _, n in categories]
        self.cat_id_to_label = to_label

    @property
    def num_classes(self) -> int:
        """Number of object categories K (labels are 1..K; 0 is background)."""
        return len(self.cat_ids)

    def label_to_cat_id(self, label: int) -> int:
        """Category id of a contiguous label (1..K)."""
        label = int(label)
        if not 1 <= label <= len(self.cat_ids):
            raise KeyError(f"label {label} out of range 1..{len(self.cat_ids)}")
        return self.cat_ids[label - 1]

    def drop_missing_images(self) -> list[str]:
        """Remove the images whose files do not exist (a cheap check before training, so that a
        missing file is a logged, counted skip up front and not a failure mid-epoch); returns
        their paths. Unreadable-but-present files are found only when decoded."""
        present = np.array([self._image_path_at(int(p)).is_file() for p in self._order], dtype=bool)
        missing = self._order[~present]
        if missing.size:
            self._order = self._order[present]
            self.num_missing_files = int(missing.size)
        return [str(self._image_path_at(int(p))) for p in missing]

    def image_info(self, index: int) -> dict:
        """The json ``images`` fields of sample ``index`` that the dataset keeps: ``id``,
        ``file_name``, ``height``, ``width`` (the last two read from the file when the json lacks them)."""
        pos = int(self._order[index])
        h, w = self._image_hw_at(pos)
        return {"id": int(self._image_ids[pos]), "file_name": self._file_name_at(pos), "height": h, "width": w}

    def __len__(self) -> int:
        return int(self._order.shape[0])

    def _use_exif_orientation(self, pos: int, im: Image.Image) -> bool:
        """Whether image position ``pos`` (opened as ``im``) is loaded upright (its EXIF orientation applied).

        The json ``width``/``height`` decide: the stored pixel grid when they give the stored size
        (also for a square photo, and for a half turn or a flip, which keep the size); upright when
        they give the size the EXIF orientation turns it to (a tool that shows photos upright, e.g.
        labelme or CVAT, annotated it so); a :class:`DatasetError` naming both sizes otherwise.
        Only reads the header (and the EXIF block when the stored size does not fit).
        """
        exp_h, exp_w = self._image_hw_at(pos)
        w, h = im.size
        if (w, h) == (exp_w, exp_h):
            return False
        uw, uh = upright_size(im)
        if (uw, uh) == (exp_w, exp_h):
            self.exif_rotated_ids.add(int(self._image_ids[pos]))
            return True
        upright = f" ({uw}x{uh} upright per its EXIF orientation)" if (uw, uh) != (w, h) else ""
        raise DatasetError(
            f"{self._describe_image_at(pos)} is {w}x{h} pixels{upright} but its json fields "
            f"'width'/'height' say {exp_w}x{exp_h}"
        )

    def _log_exif(self, first: int, count: int | None = None) -> None:
        if self._exif_logged:
            return
        self._exif_logged = True
        what = f"{count} image(s)" if count is not None else "image(s)"
        logger.info(
            "%s: %s carry an EXIF orientation and the json 'width'/'height' give the upright size: "
            "loading them upright (EXIF rotation applied; first: %s)",
            self.ann_file,
            what,
            str(self._image_path_at(first)),
        )

    def check_image_sizes(self, indices: Sequence[int] | None = None) -> int:
        """Check the size of each image file (header only) against its json ``width``/``height``
        up front, with the EXIF rule of :meth:`_use_exif_orientation`; raises the
        :class:`DatasetError` that loading the image would raise. Missing or unreadable files
        are left to loading. Returns the number of images that will be loaded upright."""
        first = None
        count = 0
        for index in range(len(self)) if indices is None else indices:
            pos = int(self._order[index])
            path = self._image_path_at(pos)
            if not path.is_file():
                continue
            try:
                with Image.open(path) as im:
                    rotated = self._use_exif_orientation(pos, im)
            except DatasetError:
                raise
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
            if rotated:
                count += 1
                first = pos if first is None else first
        if first is not None:
            self._log_exif(first, count)
        return count

    def _load_image(self, pos: int) -> torch.Tensor:
        path = self._image_path_at(pos)
        if not path.is_file():
            raise DatasetError(f"{self._describe_image_at(pos)} not found")
        try:
            with Image.open(path) as im:
                rotated = self._use_exif_orientation(pos, im)
                im.load()
                if rotated:
                    self._log_exif(pos)
                    return pil_image_to_tensor(ImageOps.exif_transpose(im))
                return pil_image_to_tensor(im)
        except DatasetError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DatasetError(f"cannot read {self._describe_image_at(pos)}: {e}") from None

    def __getitem__(self, index: int):
        pos = int(self._order[index])
        image_id = int(self._image_ids[pos])
        image = self._load_image(pos)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        exp_h, exp_w = self._image_hw_at(pos)
        if (h, w) != (exp_h, exp_w):
            raise DatasetError(
                f"{self._describe_image_at(pos)} is {w}x{h} pixels but its json fields "
                f"'width'/'height' say {exp_w}x{exp_h}"
            )

        r = self._records
        lo, hi = int(r.ann_offsets[pos]), int(r.ann_offsets[pos + 1])
        masks, keep, areas = [], [], []
        for k in range(lo, hi):
            if self._deferred_errors and int(r.ann_index[k]) in self._deferred_errors:
                raise DatasetError(self._deferred_errors[int(r.ann_index[k])])
            try:
                m = _decode(r.rle(k, h, w))
            except (ValueError, TypeError) as e:  # a compressed RLE string that does not decode
                raise DatasetError(
                    f"{self.ann_file}: annotations[{int(r.ann_index[k])}]: invalid field 'segmentation': {e}"
                ) from None
            if not m.any():  # only reachable with validate_masks=False
                self.skip_counts["empty_segmentation"] += 1
                continue
            masks.append(m)
            keep.append(k)
            areas.append(float(r.areas[k]) if r.has_area[k] else float(m.sum()))

        n = len(keep)
        mask_t = torch.from_numpy(np.stack(masks)) if n else torch.zeros((0, h, w), dtype=torch.uint8)
        keep_idx = np.asarray(keep, dtype=np.int64)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(r.boxes[keep_idx].reshape(n, 4)),
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(h, w),
            ),
            "labels": torch.from_numpy(r.labels[keep_idx]),
            "masks": tv_tensors.Mask(mask_t.to(torch.uint8)),
            "image_id": image_id,
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
        }
        img = tv_tensors.Image(image)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ann_file={self.ann_file!r}, images={len(self)}, "
            f"classes={self.num_classes}, skipped={sum(self.skip_counts.values())})"
        )


def collate_fn(batch: Sequence[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    """Collate detection samples into ``(list_of_images, list_of_targets)``."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets
