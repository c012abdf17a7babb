"""The metrics dict of an evaluation: its keys, ``metrics.json`` and the table the CLI prints."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..atomic import write_bytes_atomic
from .coco_eval import AP_KEYS
from .statistics import RESOLUTIONS

__all__ = ["METRIC_KEYS", "write_json_atomic", "write_metrics_json", "format_metrics_table"]

#: keys always present in the metrics dict returned by :func:`evaluate` / ``metrics.json``
METRIC_KEYS: tuple[str, ...] = AP_KEYS + (
    "mask_gflops_per_instance",
    "mask_gflops_per_image",
    "resolution_histogram",
    "images_per_second",
    "num_images",
    "num_detections",
    "policy",
    "mask_budget",
    "mask_score_floor",
    "mask_geometry",
    "complexity_spearman",
    "complexity_spearman_within_size",
    "complexity_spearman_by_size",
    "complexity_pairs",
    "max_dets",
    "score_thresh",
)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> str:
    """``json.dump`` to a temp file in the same folder, then ``os.replace`` (never a torn file)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return write_bytes_atomic(path, text.encode("utf-8"))


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> str:
    """``metrics.json``: the resolution histogram keyed by str, non-finite floats as null; atomic."""
    saved = dict(metrics)
    saved["resolution_histogram"] = {str(k): v for k, v in (metrics.get("resolution_histogram") or {}).items()}
    saved = {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in saved.items()}
    return write_json_atomic(path, saved, indent=2)


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of a metrics dict (APs 0–100) for the command line."""
    hist = metrics.get("resolution_histogram") or {}
    hist = {int(k): v for k, v in hist.items()}
    total = sum(hist.values())

    def pct(r):
        return f"{hist.get(r, 0)} ({100.0 * hist.get(r, 0) / total:.0f}%)" if total else str(hist.get(r, 0))

    rows: list[tuple[str, str]] = []
    rows.append(("", ""))
    rows.append(("AP (0-100)", "AP      AP50    AP75    APs     APm     APl"))
    for kind in ("bbox", "segm", "boundary"):
        vals = [metrics.get(f"{kind}_{k}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
        rows.append((kind, "  ".join(f"{_fmt(v):<6}" for v in vals).rstrip()))
    rows.append(("", ""))
    from_file = metrics.get("results_file") is not None  # evaluate --results: no model ran
    if from_file:
        rows.append(("results", str(metrics["results_file"])))
    else:
        rows.append(
            (
                "policy",
                f"{metrics.get('policy')} (mask budget {_fmt(metrics.get('mask_budget'))}, "
                f"mask geometry {metrics.get('mask_geometry')})",
            )
        )
    rows.append(("mask GFLOPs / instance", _fmt(metrics.get("mask_gflops_per_instance"), 4)))
    rows.append(("mask GFLOPs / image", _fmt(metrics.get("mask_gflops_per_image"), 4)))
    rows.append(("resolutions", "  ".join(f"{r}: {pct(r)}" for r in RESOLUTIONS)))
    rho = metrics.get("complexity_spearman")
    pairs = metrics.get("complexity_pairs")
    rows.append(("resolution~complexity rho", _fmt(rho, 3) + (f" ({pairs} matched)" if pairs is not None else "")))
    rows.append(("  within size bins", _fmt(metrics.get("complexity_spearman_within_size"), 3)))
    if not from_file:
        rows.append(("images / s (forward)", _fmt(metrics.get("images_per_second"))))
    rows.append(("images, detections", f"{metrics.get('num_images')}, {metrics.get('num_detections')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}".rstrip() for k, v in rows).strip("\n")
