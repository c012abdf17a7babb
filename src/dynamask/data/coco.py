"""COCO-format instance-segmentation dataset.

:func:`load_coco_json` parses an annotation file and validates its structure in
one fast pass, raising :class:`DatasetError` (naming the file and the field)
before any training starts. :class:`CocoInstanceDataset` turns it into
``(image, target)`` samples for torchvision detection models.

Annotations that cannot be used for training are skipped and counted in
``dataset.skip_counts`` (see :data:`SKIP_REASONS`); a single warning on the
``dynamask.data`` logger summarises them. Crowd annotations are never part of
the training target (they matter only to COCO evaluation, which reads the json).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from ..cocotools import mask_utils
from torchvision import tv_tensors

try:  # the project-wide user-facing error base class
    from dynamask.errors import DynaMaskError as _ErrorBase
except ImportError:  # pragma: no cover - keeps this module usable on its own
    _ErrorBase = Exception

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

#: Reasons an annotation is left out of the training target (keys of ``skip_counts``).
SKIP_REASONS: Tuple[str, ...] = (
    "unknown_category",      # category_id not listed in "categories"
    "unknown_image",         # image_id not listed in "images"
    "degenerate_box",        # bbox width/height < min_box_size (before or after clipping)
    "outside_image",         # bbox entirely outside the image
    "missing_segmentation",  # no (or null) "segmentation" field
    "empty_segmentation",    # no polygon with >= 3 points, or the mask rasterises empty
)

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
_REQUIRED_ANN_FIELDS = ("image_id", "category_id", "bbox")


class DatasetError(_ErrorBase, ValueError):
    """Malformed dataset input; the message names the file and the offending field."""


# --------------------------------------------------------------------------
# JSON loading / structural validation
# --------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _ann_where(path: str, i: int, ann: dict) -> str:
    ident = f" (id={ann['id']!r})" if isinstance(ann, dict) and "id" in ann else ""
    return f"{path}: annotations[{i}]{ident}"


def _validate_coco_dict(data: Any, path: str) -> None:
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object with keys "
                           f"{list(_REQUIRED_TOP_LEVEL)}, got {type(data).__name__}")
    for key in _REQUIRED_TOP_LEVEL:
        if key not in data:
            raise DatasetError(f"{path}: missing top-level key '{key}'")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: top-level key '{key}' must be a list, got {type(data[key]).__name__}")

    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        if not isinstance(cat, dict):
            raise DatasetError(f"{where}: must be an object, got {type(cat).__name__}")
        if "id" not in cat:
            raise DatasetError(f"{where}: missing field 'id'")
        if not _is_int(cat["id"]):
            raise DatasetError(f"{where}: field 'id' must be an integer, got {cat['id']!r}")
        if cat["id"] in cat_ids:
            raise DatasetError(f"{where}: duplicate category field 'id' {cat['id']}")
        if "name" in cat and not isinstance(cat["name"], str):
            raise DatasetError(f"{where}: field 'name' must be a string, got {cat['name']!r}")
        cat_ids.add(cat["id"])

    image_ids = set()
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not isinstance(img, dict):
            raise DatasetError(f"{where}: must be an object, got {type(img).__name__}")
        for field in ("id", "file_name"):
            if field not in img:
                raise DatasetError(f"{where}: missing field '{field}'")
        if not _is_int(img["id"]):
            raise DatasetError(f"{where}: field 'id' must be an integer, got {img['id']!r}")
        if img["id"] in image_ids:
            raise DatasetError(f"{where}: duplicate image field 'id' {img['id']}")
        image_ids.add(img["id"])
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise DatasetError(f"{where}: field 'file_name' must be a non-empty string, got {img['file_name']!r}")
        for field in ("width", "height"):
            if field in img and img[field] is not None and not (_is_int(img[field]) and img[field] > 0):
                raise DatasetError(f"{where}: field '{field}' must be a positive integer, got {img[field]!r}")

    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DatasetError(f"{path}: annotations[{i}]: must be an object, got {type(ann).__name__}")
        for field in _REQUIRED_ANN_FIELDS:
            if field not in ann:
                raise DatasetError(f"{_ann_where(path, i, ann)}: missing field '{field}'")
        if not _is_int(ann["image_id"]):
            raise DatasetError(f"{_ann_where(path, i, ann)}: field 'image_id' must be an integer, got {ann['image_id']!r}")
        if not _is_int(ann["category_id"]):
            raise DatasetError(
                f"{_ann_where(path, i, ann)}: field 'category_id' must be an integer, got {ann['category_id']!r}")
        bbox = ann["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
                and all(_is_number(v) and math.isfinite(v) for v in bbox)):
            raise DatasetError(f"{_ann_where(path, i, ann)}: field 'bbox' must be [x, y, width, height] "
                               f"with 4 finite numbers, got {bbox!r}")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1, True, False):
            raise DatasetError(f"{_ann_where(path, i, ann)}: field 'iscrowd' must be 0 or 1, got {ann['iscrowd']!r}")
        if "area" in ann and ann["area"] is not None and not _is_number(ann["area"]):
            raise DatasetError(f"{_ann_where(path, i, ann)}: field 'area' must be a number, got {ann['area']!r}")
        seg = ann.get("segmentation")
        if seg is None or isinstance(seg, list):
            continue
        if isinstance(seg, dict):
            if "counts" not in seg or "size" not in seg:
                raise DatasetError(f"{_ann_where(path, i, ann)}: RLE field 'segmentation' needs 'counts' and 'size'")
            size = seg["size"]
            if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
                raise DatasetError(f"{_ann_where(path, i, ann)}: field 'segmentation.size' must be [height, width], "
                                   f"got {size!r}")
            if not isinstance(seg["counts"], (list, str, bytes)):
                raise DatasetError(f"{_ann_where(path, i, ann)}: field 'segmentation.counts' must be a list "
                                   f"(uncompressed RLE) or a string (compressed RLE), got {type(seg['counts']).__name__}")
            continue
        raise DatasetError(f"{_ann_where(path, i, ann)}: field 'segmentation' must be a list of polygons or an RLE "
                           f"object, got {type(seg).__name__}")


def load_coco_json(path: Union[str, os.PathLike]) -> dict:
    """Read a COCO annotation file and validate its structure.

    Raises :class:`DatasetError` (message names the file, and the JSON error
    position or the offending field) when the file is missing, is not valid
    JSON, lacks one of the top-level keys ``images``/``annotations``/
    ``categories``, or has malformed entries (e.g. an annotation without
    ``image_id``, ``category_id`` or ``bbox``). Unknown category/image ids are
    *not* errors here; the dataset skips and counts them.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read annotation file: {e}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno} (char {e.pos}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: annotation file is not UTF-8 text (byte {e.start}): {e.reason}") from None
    _validate_coco_dict(data, path)
    return data


# --------------------------------------------------------------------------
# segmentation -> RLE
# --------------------------------------------------------------------------
def segmentation_to_rle(seg: Any, height: int, width: int) -> Optional[dict]:
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


def _decode(rle: dict) -> np.ndarray:
    """``pycocotools.mask.decode`` without its NumPy-2 ``__array__`` DeprecationWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


def _has_usable_shape(seg: Any) -> bool:
    """Cheap check (no rasterisation): an RLE, or at least one polygon with >= 3 points."""
    if isinstance(seg, dict):
        return True
    if isinstance(seg, list):
        return any(isinstance(p, dict) or (isinstance(p, (list, tuple)) and len(p) >= 6 and len(p) % 2 == 0)
                   for p in seg)
    return False


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------
#: EXIF tag 0x0112 (Orientation); values 5-8 mean the upright picture is the stored one turned by
#: 90 degrees (width and height swap), 2-4 a flip or a half turn (same size)
EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(im: "Image.Image") -> int:
    """The EXIF orientation (1..8) of an opened PIL image; 1 (as stored) when absent or unreadable."""
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a broken EXIF block must not make the image unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def upright_size(im: "Image.Image") -> Tuple[int, int]:
    """``(width, height)`` of the image as shown upright per its EXIF orientation."""
    w, h = im.size
    return (h, w) if exif_orientation(im) in _SWAPPING_ORIENTATIONS else (w, h)


def load_image(path: Union[str, os.PathLike], exif_transpose: bool = False) -> torch.Tensor:
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


def pil_image_to_tensor(im: "Image.Image") -> torch.Tensor:
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


# --------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------
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
        validate_masks: rasterise every segmentation at construction so that
            empty masks are counted up front (exact ``skip_counts`` before
            training; costs ~tens of µs per polygon annotation). When False
            only the cheap checks run up front (no polygon with >= 3 points);
            masks that rasterise empty are dropped when the image is loaded
            (and counted in that process's ``skip_counts`` only, so not in the
            main process when a DataLoader uses workers).
        categories: (category id, name) pairs that fix the label space instead of the file's
            categories — label i + 1 is ``categories[i]`` — e.g. torchvision's COCO labels, where
            label = COCO category id; annotations of other ids are skipped as ``unknown_category``.
    """

    def __init__(
        self,
        ann_file: Union[str, os.PathLike],
        image_dir: Union[str, os.PathLike],
        transforms: Optional[Callable] = None,
        keep_empty: bool = True,
        min_box_size: float = 1.0,
        validate_masks: bool = True,
        categories: Optional[Sequence[Tuple[int, str]]] = None,
    ) -> None:
        super().__init__()
        self.ann_file = str(ann_file)
        self.image_dir = Path(image_dir)
        self.transforms = transforms
        self.keep_empty = bool(keep_empty)
        self.min_box_size = float(min_box_size)
        self.validate_masks = bool(validate_masks)

        data = load_coco_json(self.ann_file)
        self._data = data
        self._coco = None

        if categories is not None:  # a label space fixed from outside (e.g. torchvision's COCO labels)
            cats = [{"id": int(i), "name": str(n)} for i, n in categories]
        else:
            cats = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids: List[int] = [int(c["id"]) for c in cats]
        self.class_names: List[str] = [str(c.get("name", c["id"])) for c in cats]
        self.cat_id_to_label: Dict[int, int] = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}

        self._images: Dict[int, dict] = {int(img["id"]): img for img in data["images"]}
        self._hw: Dict[int, Tuple[int, int]] = {}
        # per image: list of (annotation index, label, [x1, y1, x2, y2] clipped)
        self._records: Dict[int, List[Tuple[int, int, List[float]]]] = {i: [] for i in self._images}
        self.skip_counts: Dict[str, int] = {k: 0 for k in SKIP_REASONS}
        self.num_crowd = 0
        self.num_missing_files = 0
        # ids of the images loaded upright (EXIF orientation applied; see _use_exif_orientation)
        self.exif_rotated_ids: set = set()
        self._exif_logged = False

        for idx, ann in enumerate(data["annotations"]):
            if ann.get("iscrowd", 0):
                self.num_crowd += 1
                continue
            reason = self._check_annotation(idx, ann)
            if reason is not None:
                self.skip_counts[reason] += 1

        all_ids = [int(img["id"]) for img in data["images"]]
        self.ids: List[int] = all_ids if self.keep_empty else [i for i in all_ids if self._records[i]]
        self.num_dropped_images = len(all_ids) - len(self.ids)

        total = sum(self.skip_counts.values())
        if total:
            details = ", ".join(f"{k}={v}" for k, v in self.skip_counts.items() if v)
            logger.warning("%s: skipped %d of %d annotations (%s)", self.ann_file, total,
                           len(data["annotations"]), details)

    # ---------------------------------------------------------------- setup
    def _image_path(self, info: dict) -> Path:
        return self.image_dir / info["file_name"]

    def _describe_image(self, info: dict) -> str:
        return (f"image file {str(self._image_path(info))!r} (field 'file_name' = {info['file_name']!r} "
                f"of image id {info['id']} in {self.ann_file})")

    def _image_hw(self, image_id: int) -> Tuple[int, int]:
        hw = self._hw.get(image_id)
        if hw is None:
            info = self._images[image_id]
            if info.get("height") and info.get("width"):
                hw = (int(info["height"]), int(info["width"]))
            else:  # read just the header
                try:
                    with Image.open(self._image_path(info)) as im:
                        w, h = im.size
                except FileNotFoundError:
                    raise DatasetError(f"{self.ann_file}: image id {info['id']} has no 'width'/'height' fields and "
                                       f"its {self._describe_image(info)} does not exist") from None
                except (OSError, UnidentifiedImageError, ValueError) as e:
                    raise DatasetError(f"{self.ann_file}: image id {info['id']} has no 'width'/'height' fields and "
                                       f"its {self._describe_image(info)} cannot be read: {e}") from None
                hw = (int(h), int(w))
            self._hw[image_id] = hw
        return hw

    def _rle(self, idx: int, ann: dict, h: int, w: int) -> Optional[dict]:
        try:
            return segmentation_to_rle(ann["segmentation"], h, w)
        except (ValueError, TypeError, KeyError) as e:
            raise DatasetError(f"{_ann_where(self.ann_file, idx, ann)}: invalid field 'segmentation': {e}") from None

    def _check_annotation(self, idx: int, ann: dict) -> Optional[str]:
        image_id = int(ann["image_id"])
        if image_id not in self._images:
            return "unknown_image"
        label = self.cat_id_to_label.get(int(ann["category_id"]))
        if label is None:
            return "unknown_category"
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        if bw < self.min_box_size or bh < self.min_box_size:
            return "degenerate_box"
        h, w = self._image_hw(image_id)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + bw, float(w)), min(y + bh, float(h))
        if x2 <= x1 or y2 <= y1:
            return "outside_image"
        if x2 - x1 < self.min_box_size or y2 - y1 < self.min_box_size:
            return "degenerate_box"
        if ann.get("segmentation") is None:
            return "missing_segmentation"
        if self.validate_masks:
            rle = self._rle(idx, ann, h, w)
            if rle is None or int(mask_utils.area(rle)) == 0:
                return "empty_segmentation"
        elif not _has_usable_shape(ann["segmentation"]):
            return "empty_segmentation"
        self._records[image_id].append((idx, label, [x1, y1, x2, y2]))
        return None

    # ---------------------------------------------------------------- public
    @property
    def coco(self):
        """A ``pycocotools.coco.COCO`` over the (unfiltered) json, built on first use."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self._data
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def use_categories(self, categories: Sequence[Tuple[int, str]]) -> None:
        """Switch to a label space fixed from outside (see the ``categories`` argument), after
        construction; every category of the file must be among ``categories``."""
        new_ids = [int(i) for i, _ in categories]
        to_label = {cid: k + 1 for k, cid in enumerate(new_ids)}
        outside = [cid for cid in self.cat_ids if cid not in to_label]
        if outside:
            raise ValueError(f"{self.ann_file}: categories {outside[:5]} are not in the requested label space")
        old = self.cat_ids
        self._records = {image_id: [(idx, to_label[old[label - 1]], box) for idx, label, box in recs]
                         for image_id, recs in self._records.items()}
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

    def drop_missing_images(self) -> List[str]:
        """Remove the images whose files do not exist (a cheap check before training, so that a
        missing file is a logged, counted skip up front and not a failure mid-epoch); returns
        their paths. Unreadable-but-present files are found only when decoded."""
        missing = [i for i in self.ids if not self._image_path(self._images[i]).is_file()]
        if missing:
            gone = set(missing)
            self.ids = [i for i in self.ids if i not in gone]
            self.num_missing_files = len(missing)
        return [str(self._image_path(self._images[i])) for i in missing]

    def image_info(self, index: int) -> dict:
        """The json ``images`` entry of sample ``index``."""
        return self._images[self.ids[index]]

    def __len__(self) -> int:
        return len(self.ids)

    def _use_exif_orientation(self, info: dict, im: "Image.Image") -> bool:
        """Whether image ``info`` (opened as ``im``) is loaded upright (its EXIF orientation applied).

        The json ``width``/``height`` decide: the stored pixel grid when they give the stored size
        (also for a square photo, and for a half turn or a flip, which keep the size); upright when
        they give the size the EXIF orientation turns it to (a tool that shows photos upright, e.g.
        labelme or CVAT, annotated it so); a :class:`DatasetError` naming both sizes otherwise.
        Only reads the header (and the EXIF block when the stored size does not fit).
        """
        image_id = int(info["id"])
        exp_h, exp_w = self._image_hw(image_id)
        w, h = im.size
        if (w, h) == (exp_w, exp_h):
            return False
        uw, uh = upright_size(im)
        if (uw, uh) == (exp_w, exp_h):
            self.exif_rotated_ids.add(image_id)
            return True
        upright = f" ({uw}x{uh} upright per its EXIF orientation)" if (uw, uh) != (w, h) else ""
        raise DatasetError(f"{self._describe_image(info)} is {w}x{h} pixels{upright} but its json fields "
                           f"'width'/'height' say {exp_w}x{exp_h}")

    def _log_exif(self, first: dict, count: Optional[int] = None) -> None:
        if self._exif_logged:
            return
        self._exif_logged = True
        what = f"{count} image(s)" if count is not None else "image(s)"
        logger.info("%s: %s carry an EXIF orientation and the json 'width'/'height' give the upright size: "
                    "loading them upright (EXIF rotation applied; first: %s)", self.ann_file, what,
                    str(self._image_path(first)))

    def check_image_sizes(self, indices: Optional[Sequence[int]] = None) -> int:
        """Check the size of each image file (header only) against its json ``width``/``height``
        up front, with the EXIF rule of :meth:`_use_exif_orientation`; raises the
        :class:`DatasetError` that loading the image would raise. Missing or unreadable files
        are left to loading. Returns the number of images that will be loaded upright."""
        first = None
        count = 0
        for index in (range(len(self.ids)) if indices is None else indices):
            info = self._images[self.ids[index]]
            path = self._image_path(info)
            if not path.is_file():
                continue
            try:
                with Image.open(path) as im:
                    rotated = self._use_exif_orientation(info, im)
            except DatasetError:
                raise
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
                continue
            if rotated:
                count += 1
                first = first or info
        if first is not None:
            self._log_exif(first, count)
        return count

    def _load_image(self, info: dict) -> torch.Tensor:
        path = self._image_path(info)
        if not path.is_file():
            raise DatasetError(f"{self._describe_image(info)} not found")
        try:
            with Image.open(path) as im:
                rotated = self._use_exif_orientation(info, im)
                im.load()
                if rotated:
                    self._log_exif(info)
                    return pil_image_to_tensor(ImageOps.exif_transpose(im))
                return pil_image_to_tensor(im)
        except DatasetError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise DatasetError(f"cannot read {self._describe_image(info)}: {e}") from None

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self._images[image_id]
        image = self._load_image(info)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        exp_h, exp_w = self._image_hw(image_id)
        if (h, w) != (exp_h, exp_w):
            raise DatasetError(f"{self._describe_image(info)} is {w}x{h} pixels but its json fields "
                               f"'width'/'height' say {exp_w}x{exp_h}")

        anns = self._data["annotations"]
        masks, boxes, labels, areas = [], [], [], []
        for idx, label, box in self._records[image_id]:
            ann = anns[idx]
            rle = self._rle(idx, ann, h, w)
            m = None if rle is None else _decode(rle)
            if m is None or not m.any():  # only reachable with validate_masks=False
                self.skip_counts["empty_segmentation"] += 1
                continue
            masks.append(m)
            boxes.append(box)
            labels.append(label)
            a = ann.get("area")
            areas.append(float(a) if a is not None else float(m.sum()))

        n = len(labels)
        mask_t = torch.from_numpy(np.stack(masks)) if n else torch.zeros((0, h, w), dtype=torch.uint8)
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                                              format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w)),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": tv_tensors.Mask(mask_t.to(torch.uint8)),
            "image_id": int(image_id),
            "iscrowd": torch.zeros(n, dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
        }
        img = tv_tensors.Image(image)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(ann_file={self.ann_file!r}, images={len(self)}, "
                f"classes={self.num_classes}, skipped={sum(self.skip_counts.values())})")


def collate_fn(batch: Sequence[Tuple[Any, Any]]) -> Tuple[List[Any], List[Any]]:
    """Collate detection samples into ``(list_of_images, list_of_targets)``."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets
