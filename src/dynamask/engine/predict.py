"""Predict on image files / folders: overlays plus one COCO-style results JSON.

:func:`predict_files` writes, per readable image, ``<stem>_overlay.png`` (mask outlines coloured
by the chosen resolution, legend with counts per resolution, boxes, class names and scores; see
:func:`dynamask.visualize.draw_overlay`) and, for all images, ``predictions.json``: a list of
``{file_name, image_id, category_id, category_name, bbox [x, y, w, h], score, segmentation
(compressed RLE, counts str), mask_resolution, mask_flops}``. ``image_id`` is the 1-based position
of the file in the sorted input list.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..errors import DynaMaskError
from ..progress import progress_bar

__all__ = ["IMAGE_EXTENSIONS", "find_images", "predict_files"]

logger = logging.getLogger("dynamask.predict")

#: file extensions picked up when a folder is given (case-insensitive)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: overlays of images smaller than this (longer side) are enlarged so that text stays legible
OVERLAY_MIN_SIZE = 512


def _is_within(path: Path, folder: Optional[Path]) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(inputs: Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]],
                exclude_dir: Optional[Union[str, os.PathLike]] = None) -> List[Path]:
    """Image files from files and folders (folders searched recursively for
    :data:`IMAGE_EXTENSIONS`; hidden files and anything under ``exclude_dir`` skipped; sorted).
    A file named explicitly is taken whatever its extension. A path that does not exist raises
    :class:`DynaMaskError`; duplicates are removed."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excl = Path(exclude_dir).resolve() if exclude_dir is not None else None
    found: List[Path] = []
    seen = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and not _is_within(f, excl))
        elif p.exists():
            files = [p]
        else:
            raise DynaMaskError(f"{os.fspath(p)}: no such file or folder")
        for f in files:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f)
    return found


def _unique_name(stem: str, used: set) -> str:
    name = f"{stem}_overlay.png"
    k = 2
    while name.lower() in used:
        name = f"{stem}-{k}_overlay.png"
        k += 1
    used.add(name.lower())
    return name


def predict_files(
    weights: Union[str, os.PathLike],
    inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    out_dir: Union[str, os.PathLike],
    config: Union[None, str, os.PathLike, dict] = None,
    score_thresh: float = 0.5,
    device: Any = None,
    progress: bool = True,
    policy: Optional[str] = None,
    mask_budget: Optional[float] = None,
) -> str:
    """Run a checkpoint on image files and/or folders; returns the path of ``predictions.json``.

    Writes ``out_dir/<stem>_overlay.png`` per image (``<stem>-2_overlay.png`` ... when stems
    collide) and ``out_dir/predictions.json`` (see the module docstring). An unreadable image is
    skipped with a warning naming it and counted; the summary (logged, and printed to stderr
    when ``progress``) gives the number skipped. No image found → :class:`DynaMaskError`.
    """
    from ..predictor import Predictor, load_image_file
    from ..visualize import draw_overlay, write_png
    from .evaluate import predictions_to_coco_results, write_json_atomic

    out = Path(out_dir)
    files = find_images(inputs, exclude_dir=out if out.exists() else None)
    if not files:
        shown = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(i) for i in inputs]
        raise DynaMaskError(f"no images found in {', '.join(shown) or '(no inputs)'} "
                            f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
    predictor = Predictor(weights, config=config, device=device, score_thresh=score_thresh,
                          policy=policy, mask_budget=mask_budget)
    out.mkdir(parents=True, exist_ok=True)

    bar = progress_bar(len(files), "predict", unit="img", enabled=progress)

    results: List[Dict[str, Any]] = []
    used: set = set()
    skipped: List[str] = []
    written = 0
    hist = {14: 0, 28: 0, 56: 0, 112: 0}
    for image_id, path in enumerate(files, start=1):
        try:
            tensor = load_image_file(path)
        except DynaMaskError as exc:
            logger.warning("skipping unreadable image %s: %s", os.fspath(path), exc)
            skipped.append(os.fspath(path))
            bar.update(1)
            continue
        pred = predictor.predict(tensor)
        entries = predictions_to_coco_results(pred, image_id, predictor.cat_ids,
                                              extra={"file_name": os.fspath(path)})
        for e in entries:
            label = predictor.cat_ids.index(e["category_id"]) + 1
            e["category_name"] = predictor.class_names[label - 1]
            r = e.get("mask_resolution")
            if r in hist:
                hist[r] += 1
        results.extend(entries)
        image = (tensor.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        overlay = draw_overlay(image, pred, predictor.class_names, score_thresh, min_display_size=OVERLAY_MIN_SIZE)
        write_png(out / _unique_name(path.stem, used), overlay)
        written += 1
        bar.update(1)
    bar.close()

    # key order: file_name first, then the COCO fields
    ordered = [{"file_name": e["file_name"], **{k: v for k, v in e.items() if k != "file_name"}} for e in results]
    json_path = os.fspath(out / "predictions.json")
    write_json_atomic(json_path, ordered)

    summary = (f"predicted {written} image(s), {len(results)} instance(s) "
               f"(resolutions: {', '.join(f'{r}: {n}' for r, n in hist.items())}); "
               f"skipped {len(skipped)} unreadable image(s); wrote {json_path}")
    logger.info(summary)
    if progress:
        print(summary, file=sys.stderr)
    if skipped and written == 0:
        logger.warning("none of the %d image(s) could be read", len(files))
    return json_path
