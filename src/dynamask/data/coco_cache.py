"""The cache of a COCO dataset's parsed records: its key and writing an entry.

Parsing a large annotation file takes minutes; an entry (``records-<key>/``, one ``.npy`` file per
buffer, see :func:`~dynamask.data.records.save_cache`) is loaded memory-mapped instead, so that
every process that maps it shares the pages. The key covers everything the records depend on, so
a changed file or argument never meets a stale entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..coco_json import DatasetError
from .records import CACHE_FORMAT, load_cache, save_cache

logger = logging.getLogger("dynamask.data")


def records_cache_key(
    ann_file: str,
    image_dir: str | os.PathLike,
    min_box_size: float,
    validate_masks: bool,
    categories: Sequence[tuple[int, str]] | None,
) -> str:
    """The file's SHA-256 and every argument the records depend on (the image folder too: image
    sizes missing from the json are read from the files). The file is read in pieces."""
    h = hashlib.sha256()
    try:
        with open(ann_file, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
    except FileNotFoundError:
        raise DatasetError(f"{ann_file}: annotation file not found") from None
    except OSError as e:
        raise DatasetError(f"{ann_file}: cannot read annotation file: {e}") from None
    h.update(
        json.dumps(
            [
                CACHE_FORMAT,
                min_box_size,
                validate_masks,
                None if categories is None else [[int(i), str(n)] for i, n in categories],
                os.path.abspath(image_dir),
            ]
        ).encode()
    )
    return h.hexdigest()[:24]


def write_cache_entry(entry: Path, arrays: dict, meta: dict, ann_file: str) -> None:
    """Save ``arrays`` and ``meta`` as cache entry ``entry`` (a broken entry there is replaced)."""
    if entry.exists() and load_cache(entry, tuple(arrays)) is None:  # a broken entry: replace it
        shutil.rmtree(entry, ignore_errors=True)
    if save_cache(entry, arrays, meta):
        logger.info("%s: parsed records cached in %s", ann_file, entry)
