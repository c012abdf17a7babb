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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DynaMaskError
from ..progress import progress_bar

__all__ = ["IMAGE_EXTENSIONS", "find_images", "predict_files"]

logger = logging.getLogger("dynamask.predict")

#: file extensions picked up when a folder is given (case-insensitive)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: overlays of images smaller than this (longer side) are enlarged so that text stays legible
OVERLAY_MIN_SIZE = 512


def _is_within(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def find_images(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], exclude_dir: str | os.PathLike | None = None
) -> list[Path]:
    """Image files from files and folders (folders searched recursively for
    :data:`IMAGE_EXTENSIONS`; hidden files and anything under ``exclude_dir`` skipped; sorted).
    A file named explicitly is taken whatever its extension. A path that does not exist raises
    :class:`DynaMaskError`; duplicates are removed."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excl = Path(exclude_dir).resolve() if exclude_dir is not None else None
    found: list[Path] = []
    seen = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(
                f
                for f in p.rglob("*")
                if f.is_file()
                and f.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and not _is_within(f, excl)
            )
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


def _name_group(path: Path) -> str:
    """The stem with every trailing ``-<digits>`` removed, lower-cased: every overlay name that
    :func:`_unique_name` can give this file (``stem``, ``stem-2``, ``stem-2-2`` ...) has this
    group, so files of different groups never compete for a name."""
    stem = path.stem.lower()
    while True:
        head, sep, tail = stem.rpartition("-")
        if not sep or not tail.isdigit() or not head:
            return stem
        stem = head


def shard_files(files: Sequence[Path], rank: int, world: int) -> list[int]:
    """The positions in ``files`` that process ``rank`` of ``world`` predicts: files whose
    overlay names could collide (:func:`_name_group`) stay together on one process, in the
    single-process order, so they get the names a single-process run gives them; the groups
    are dealt out in turn by their first file."""
    groups: dict[str, int] = {}
    mine = []
    for position, path in enumerate(files):
        group = groups.setdefault(_name_group(path), len(groups))
        if group % world == rank:
            mine.append(position)
    return mine


def predict_files(
    weights: str | os.PathLike,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: None | str | os.PathLike | dict = None,
    score_thresh: float = 0.5,
    device: Any = None,
    progress: bool = True,
    policy: str | None = None,
    mask_budget: float | None = None,
    shard: bool | None = None,
) -> str:
    """Run a checkpoint on image files and/or folders; returns the path of ``predictions.json``.

    Writes ``out_dir/<stem>_overlay.png`` per image (``<stem>-2_overlay.png`` ... when stems
    collide) and ``out_dir/predictions.json`` (see the module docstring). An unreadable image is
    skipped with a warning naming it and counted; the summary (logged, and printed to stderr
    when ``progress``) gives the number skipped. No image found → :class:`DynaMaskError`.

    Sharded (``shard``: default True inside an initialised process group of more than one
    process, e.g. under ``torchrun``; every process must call this then): rank 0 lists the files
    and sends the list to every process; each process predicts its share (:func:`shard_files`)
    on its own device (``cuda:LOCAL_RANK`` for ``cuda``) and writes those overlays; rank 0
    gathers the entries and writes ``predictions.json`` once, in the single-process order. The
    files written are those of a one-process run. A failure on any process raises on every one.
    """
    from ..inference import resolve_device
    from ..predictor import Predictor
    from . import distributed as du
    from .evaluate import write_json_atomic

    out = Path(out_dir)
    if shard is None:
        shard = du.is_dist()
    sharded = bool(shard) and du.is_dist()
    rank, world = (du.get_rank(), du.get_world_size()) if sharded else (0, 1)
    failure: BaseException | None = None
    files: list[Path] = []
    try:
        if rank == 0:  # one listing: the others could see rank 0's first overlays appear in a listed folder
            files = _list_inputs(inputs, out)
    except Exception as exc:  # noqa: BLE001 - agreed on below
        failure = exc
    if sharded:
        du.agree_on_failure(failure, "predict")
        files = [Path(f) for f in du.broadcast_object([os.fspath(f) for f in files])]
    elif failure is not None:
        raise failure

    mine = shard_files(files, rank, world) if sharded else list(range(len(files)))
    part: dict[str, Any] | None = None
    try:
        dev = du.process_device(resolve_device(device)) if sharded else device
        predictor = Predictor(
            weights, config=config, device=dev, score_thresh=score_thresh, policy=policy, mask_budget=mask_budget
        )
        out.mkdir(parents=True, exist_ok=True)
        part = _predict_part(predictor, files, mine, out, score_thresh, progress and rank == 0)
    except Exception as exc:  # noqa: BLE001
        if not sharded:
            raise
        failure = exc
    json_path = os.fspath(out / "predictions.json")
    if not sharded:
        return _write_predictions(json_path, [part], len(files), progress, write_json_atomic)

    gathered = du.gather_object(part if failure is None else f"{type(failure).__name__}: {failure}"[:500])
    status: tuple[str, Any, Any] = ("ok", None, None)
    if rank == 0:
        try:
            failed = [(r, g) for r, g in enumerate(gathered) if isinstance(g, str)]
            if failed:
                status = ("failed", *failed[0])
            else:
                _write_predictions(json_path, gathered, len(files), progress, write_json_atomic, world)
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
            status = ("failed", 0, f"{type(exc).__name__}: {exc}")
    du.settle_on_rank0_status(status, failure, "predict")
    return json_path


def _list_inputs(inputs, out: Path) -> list[Path]:
    files = find_images(inputs, exclude_dir=out if out.exists() else None)
    if not files:
        shown = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(i) for i in inputs]
        raise DynaMaskError(
            f"no images found in {', '.join(shown) or '(no inputs)'} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _predict_part(
    predictor, files: Sequence[Path], positions: Sequence[int], out: Path, score_thresh: float, progress: bool
) -> dict[str, Any]:
    """Predict ``files[p]`` for ``p`` in ``positions`` (image id ``p + 1``) and write their overlays;
    the entries per position, the skipped files and the counts."""
    from ..predictor import load_image_file
    from ..visualize import draw_overlay, write_png
    from .evaluate import predictions_to_coco_results

    bar = progress_bar(len(positions), "predict", unit="img", enabled=progress)
    entries_at: dict[int, list[dict[str, Any]]] = {}
    used: set = set()
    skipped: list[tuple[int, str]] = []
    written = 0
    hist = {14: 0, 28: 0, 56: 0, 112: 0}
    for position in positions:
        path = files[position]
        try:
            tensor = load_image_file(path)
        except DynaMaskError as exc:
            logger.warning("skipping unreadable image %s: %s", os.fspath(path), exc)
            skipped.append((position, os.fspath(path)))
            bar.update(1)
            continue
        pred = predictor.predict(tensor)
        entries = predictions_to_coco_results(
            pred, position + 1, predictor.cat_ids, extra={"file_name": os.fspath(path)}
        )
        for e in entries:
            label = predictor.cat_ids.index(e["category_id"]) + 1
            e["category_name"] = predictor.class_names[label - 1]
            r = e.get("mask_resolution")
            if r in hist:
                hist[r] += 1
        entries_at[position] = entries
        image = (tensor.permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
        overlay = draw_overlay(image, pred, predictor.class_names, score_thresh, min_display_size=OVERLAY_MIN_SIZE)
        write_png(out / _unique_name(path.stem, used), overlay)
        written += 1
        bar.update(1)
    bar.close()
    return {"entries": entries_at, "skipped": skipped, "written": written, "hist": hist, "count": len(positions)}


def _write_predictions(
    json_path: str, parts: Sequence[dict[str, Any]], total: int, progress: bool, write_json, processes: int = 1
) -> str:
    """``predictions.json`` from the parts of every process, in file order; the summary."""
    entries_at: dict[int, list[dict[str, Any]]] = {}
    hist = {14: 0, 28: 0, 56: 0, 112: 0}
    skipped: list[tuple[int, str]] = []
    written = 0
    for part in parts:
        entries_at.update(part["entries"])
        skipped.extend(part["skipped"])
        written += part["written"]
        for r, n in part["hist"].items():
            hist[r] += n
    results = [e for position in sorted(entries_at) for e in entries_at[position]]
    # key order: file_name first, then the COCO fields
    ordered = [{"file_name": e["file_name"], **{k: v for k, v in e.items() if k != "file_name"}} for e in results]
    write_json(json_path, ordered)

    shared = (
        f" on {processes} processes ({'/'.join(str(p['count']) for p in parts)} image(s) each)" if processes > 1 else ""
    )
    summary = (
        f"predicted {written} image(s){shared}, {len(results)} instance(s) "
        f"(resolutions: {', '.join(f'{r}: {n}' for r, n in hist.items())}); "
        f"skipped {len(skipped)} unreadable image(s); wrote {json_path}"
    )
    logger.info(summary)
    if progress:
        print(summary, file=sys.stderr)
    if skipped and written == 0:
        logger.warning("none of the %d image(s) could be read", total)
    return json_path
