"""Drawing helpers: prediction overlays, galleries and accuracy-vs-cost plots.

* :func:`draw_overlay` draws each instance's mask (light fill + outline) in a colour that encodes
  the mask resolution the head chose for it (:data:`RESOLUTION_COLORS`), its box, class name and
  score, and a legend with the four resolutions and how many instances got each.
* :func:`save_gallery` tiles several overlays into one PNG.
* :func:`plot_ap_vs_flops` plots segm AP and boundary AP against mask-head GFLOPs (matplotlib,
  Agg canvas only: no pyplot, no global backend change).

Images are RGB ``uint8`` H×W×3 arrays throughout; files are written atomically (temp file in the
same folder, then ``os.replace``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

from .atomic import atomic_path, write_bytes_atomic

__all__ = [
    "RESOLUTION_COLORS",
    "UNKNOWN_RESOLUTION_COLOR",
    "draw_overlay",
    "save_gallery",
    "plot_ap_vs_flops",
    "write_bytes_atomic",
    "write_png",
]

#: RGB colour per mask resolution (coarse = warm, fine = cool): fixed, so figures are comparable.
RESOLUTION_COLORS: dict[int, tuple[int, int, int]] = {
    14: (230, 38, 38),  # red
    28: (255, 150, 0),  # orange
    56: (40, 180, 60),  # green
    112: (40, 110, 235),  # blue
}
#: colour of an instance whose resolution is missing or not one of the four
UNKNOWN_RESOLUTION_COLOR: tuple[int, int, int] = (160, 160, 160)

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_HALO = (15, 15, 15)


# --------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------
def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> str:
    """Save an RGB (or gray) uint8 image as PNG, atomically."""
    img = np.ascontiguousarray(image_rgb)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 failure
        raise OSError(f"{os.fspath(path)}: PNG encoding failed")
    return write_bytes_atomic(path, buf.tobytes())


# --------------------------------------------------------------------------
# overlays
# --------------------------------------------------------------------------
def _to_numpy(x: Any) -> np.ndarray:
    if x is None:
        return np.zeros((0,))
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:  # float16 / bfloat16 have no numpy view
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ValueError(f"draw_overlay: expected an H×W×3 image, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating) and (img.size == 0 or float(img.max()) <= 1.0):
            img = img * 255.0
        img = np.clip(np.rint(img.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _blend_rect(canvas: np.ndarray, x0: int, y0: int, x1: int, y1: int, color, alpha: float) -> None:
    h, w = canvas.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    region = (1 - alpha) * region + alpha * np.asarray(color, np.float32)
    canvas[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)


def _draw_legend(canvas: np.ndarray, counts: Mapping[int, int], font_scale: float, thickness: int) -> None:
    rows = [f"{r}x{r}: {counts.get(r, 0)}" for r in RESOLUTION_COLORS]
    title = "mask res."
    sizes = [cv2.getTextSize(t, _FONT, font_scale, thickness)[0] for t in [title] + rows]
    text_h = max(s[1] for s in sizes)
    pad = max(2, int(round(text_h * 0.4)))
    row_h = text_h + 2 * pad
    swatch = text_h
    width = pad + max(sizes[0][0], swatch + pad + max(s[0] for s in sizes[1:])) + pad
    height = row_h * (len(rows) + 1) + pad
    x0, y0 = 2, 2
    _blend_rect(canvas, x0, y0, x0 + width, y0 + height, (20, 20, 20), 0.72)
    y = y0 + pad + text_h
    cv2.putText(canvas, title, (x0 + pad, y), _FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    for res, text in zip(RESOLUTION_COLORS, rows):
        y += row_h
        color = RESOLUTION_COLORS[res]
        cv2.rectangle(canvas, (x0 + pad, y - swatch), (x0 + pad + swatch, y), color, -1)
        cv2.putText(
            canvas, text, (x0 + 2 * pad + swatch, y), _FONT, font_scale, (255, 255, 255), thickness, cv2.LINE_AA
        )


def _enlarged_canvas(img: np.ndarray, min_display_size: int) -> tuple[np.ndarray, int]:
    """A copy of ``img`` to draw on and its integer enlargement factor: when the longer side is under
    ``min_display_size``, nearest-neighbour enlarged (at most 16x) so that text and legend stay legible."""
    h, w = img.shape[:2]
    scale = 1
    if min_display_size and max(h, w) > 0 and max(h, w) < min_display_size:
        scale = min(16, int(math.ceil(min_display_size / max(h, w))))
    canvas = cv2.resize(img, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST) if scale > 1 else img.copy()
    return canvas, scale


def _prediction_arrays(prediction: Mapping[str, Any]):
    """``(scores, boxes, labels, resolutions, masks)`` of a prediction as numpy arrays of one length N:
    resolutions are 0 when the prediction has none, masks N×H×W float32 or None."""
    scores = _to_numpy(prediction.get("scores")).astype(np.float64).reshape(-1)
    n = scores.shape[0]
    boxes = _to_numpy(prediction.get("boxes")).astype(np.float64).reshape(n, 4) if n else np.zeros((0, 4))
    labels = _to_numpy(prediction.get("labels")).astype(np.int64).reshape(-1) if n else np.zeros((0,), np.int64)
    res_raw = prediction.get("mask_resolution")
    resolutions = (
        _to_numpy(res_raw).astype(np.int64).reshape(-1) if res_raw is not None and n else np.zeros((n,), np.int64)
    )
    masks = prediction.get("masks")
    masks = _to_numpy(masks) if masks is not None and n else None
    if masks is not None:
        masks = masks.reshape(n, masks.shape[-2], masks.shape[-1]).astype(np.float32)
    return scores, boxes, labels, resolutions, masks


def _fill_and_outline_mask(
    canvas: np.ndarray, prob: np.ndarray, image_hw: tuple[int, int], scale: int, color, alpha: float, line_thick: int
) -> None:
    """Tint the mask (``prob > 0.5``) with ``color`` and outline it over a dark halo. ``prob`` is
    resampled to the image, then to the enlarged canvas, before thresholding: smooth outlines."""
    h, w = image_hw
    ch, cw = canvas.shape[:2]
    if prob.shape != (h, w):  # unexpected size: resample to the image
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    if scale > 1:
        prob = cv2.resize(prob, (cw, ch), interpolation=cv2.INTER_LINEAR)
    binary = prob > 0.5
    if not binary.any():
        return
    region = canvas[binary].astype(np.float32)
    canvas[binary] = np.clip(np.rint((1 - alpha) * region + alpha * np.asarray(color, np.float32)), 0, 255).astype(
        np.uint8
    )
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    # dark halo under the coloured outline: legible on any background
    cv2.drawContours(canvas, contours, -1, _HALO, line_thick + 2, cv2.LINE_AA)
    cv2.drawContours(canvas, contours, -1, color, line_thick, cv2.LINE_AA)


def _class_name(label: int, class_names: Sequence[str] | None) -> str:
    """``class_names[label - 1]``, or ``"class <label>"`` when there is no such name."""
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return f"class {label}"


def _draw_box_and_caption(
    canvas: np.ndarray, box: np.ndarray, text: str, color, font_scale: float, text_thick: int
) -> None:
    """The box (canvas pixels) over a dark halo, and ``text`` on a ``color`` tag at its top-left
    corner: above the box where there is room, else inside it, always within the canvas."""
    ch, cw = canvas.shape[:2]
    x0, y0, x1, y1 = box.tolist()
    p0 = (int(round(x0)), int(round(y0)))
    p1 = (int(round(x1)), int(round(y1)))
    cv2.rectangle(canvas, p0, p1, _HALO, 3, cv2.LINE_AA)
    cv2.rectangle(canvas, p0, p1, color, 1, cv2.LINE_AA)
    (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, text_thick)
    tx = min(max(p0[0], 0), max(0, cw - tw - 2))
    ty = p0[1] - 2 if p0[1] - th - base - 2 >= 0 else min(ch - base, p0[1] + th + 2)
    _blend_rect(canvas, tx, ty - th - 2, tx + tw + 2, ty + base, color, 0.8)
    cv2.putText(canvas, text, (tx + 1, ty), _FONT, font_scale, _text_color(color), text_thick, cv2.LINE_AA)


def draw_overlay(
    image_uint8_hwc: np.ndarray,
    prediction: Mapping[str, Any],
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.5,
    *,
    alpha: float = 0.3,
    min_display_size: int = 0,
    legend: bool = True,
) -> np.ndarray:
    """Draw a prediction on an image; returns a new RGB ``uint8`` array.

    ``prediction`` is a model / :class:`~dynamask.predictor.Predictor` output dict (tensors or
    arrays): ``boxes`` (N×4 XYXY, image pixels), ``labels`` (1..K), ``scores``, ``masks`` (N×1×H×W
    or N×H×W, probabilities or binary) and ``mask_resolution`` (N, 14/28/56/112; optional).
    Instances with ``score >= score_thresh`` are drawn (lowest score first, so the most confident
    is on top): mask filled lightly (``alpha``) and outlined in ``RESOLUTION_COLORS[resolution]``,
    box, and ``"<class> <score>"`` text. ``class_names[label - 1]`` names label ``label``.
    The legend (top-left) lists each resolution's colour and the number of drawn instances.

    ``min_display_size``: when the image's longer side is smaller, the canvas is first enlarged
    by an integer factor (nearest neighbour; masks are resampled before thresholding, so outlines
    stay smooth) so that text and legend are legible; the returned array is then that big.
    """
    img = _as_rgb_uint8(image_uint8_hwc)
    canvas, scale = _enlarged_canvas(img, min_display_size)
    scores, boxes, labels, resolutions, masks = _prediction_arrays(prediction)

    diag = max(canvas.shape[:2])
    font_scale = float(min(1.0, max(0.35, diag / 1000.0)))
    text_thick = 1 if font_scale < 0.7 else 2
    line_thick = max(1, int(round(diag / 250.0)))

    keep = np.nonzero(scores >= score_thresh)[0]
    keep = keep[np.argsort(scores[keep], kind="stable")]  # ascending: best drawn last (on top)
    counts: dict[int, int] = {r: 0 for r in RESOLUTION_COLORS}

    # masks first (fill + outline), then boxes and text, so text is never covered by a fill
    for i in keep:
        res = int(resolutions[i])
        if res in counts:
            counts[res] += 1
        if masks is not None:
            color = RESOLUTION_COLORS.get(res, UNKNOWN_RESOLUTION_COLOR)
            _fill_and_outline_mask(canvas, masks[i], img.shape[:2], scale, color, alpha, line_thick)

    for i in keep:
        color = RESOLUTION_COLORS.get(int(resolutions[i]), UNKNOWN_RESOLUTION_COLOR)
        text = f"{_class_name(int(labels[i]), class_names)} {scores[i]:.2f}"
        _draw_box_and_caption(canvas, boxes[i] * scale, text, color, font_scale, text_thick)

    if legend:
        _draw_legend(canvas, counts, font_scale, text_thick)
    return canvas


# --------------------------------------------------------------------------
# gallery
# --------------------------------------------------------------------------
def save_gallery(
    overlays: Sequence[np.ndarray],
    path: str | os.PathLike,
    cols: int = 4,
    gap: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> str:
    """Tile RGB images (any sizes; each is centred in a cell of the largest size) into one PNG
    with ``cols`` columns and a ``gap``-pixel margin; written atomically. Returns the path."""
    if not overlays:
        raise ValueError("save_gallery: no images to tile")
    if cols < 1:
        raise ValueError(f"save_gallery: cols must be >= 1, got {cols}")
    imgs = [_as_rgb_uint8(o) for o in overlays]
    cell_h = max(i.shape[0] for i in imgs)
    cell_w = max(i.shape[1] for i in imgs)
    cols = min(cols, len(imgs))
    rows = int(math.ceil(len(imgs) / cols))
    out = np.empty((rows * cell_h + (rows + 1) * gap, cols * cell_w + (cols + 1) * gap, 3), np.uint8)
    out[:] = np.asarray(background, np.uint8)
    for k, img in enumerate(imgs):
        r, c = divmod(k, cols)
        y = gap + r * (cell_h + gap) + (cell_h - img.shape[0]) // 2
        x = gap + c * (cell_w + gap) + (cell_w - img.shape[1]) // 2
        out[y : y + img.shape[0], x : x + img.shape[1]] = img
    return write_png(path, out)


# --------------------------------------------------------------------------
# AP vs FLOPs plot
# --------------------------------------------------------------------------
def _place_labels(ax, fig, xs, ys, names, fontsize=8) -> None:
    """Label each point without overlapping earlier labels or points: the first free spot among
    eight around the point (greedy, in display coordinates)."""
    renderer = fig.canvas.get_renderer()
    offsets = [
        (6, 5, "left", "bottom"),
        (6, -5, "left", "top"),
        (-6, 5, "right", "bottom"),
        (-6, -5, "right", "top"),
        (0, 10, "center", "bottom"),
        (0, -10, "center", "top"),
        (10, 0, "left", "center"),
        (-10, 0, "right", "center"),
    ]
    points = [ax.transData.transform((x, y)) for x, y in zip(xs, ys)]
    placed = []
    for (x, y), name in zip(zip(xs, ys), names):
        chosen = None
        for dx, dy, ha, va in offsets:
            text = ax.annotate(
                name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=fontsize
            )
            box = text.get_window_extent(renderer).expanded(1.05, 1.15)
            hits_point = any(box.contains(px, py) for px, py in points)
            if not hits_point and not any(box.overlaps(other) for other in placed):
                chosen = box
                break
            text.remove()
        if chosen is None:  # crowded: keep the first spot
            dx, dy, ha, va = offsets[0]
            text = ax.annotate(
                name, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=fontsize
            )
            chosen = text.get_window_extent(renderer)
        placed.append(chosen)


def plot_ap_vs_flops(
    points: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    xlabel: str = "mask-head GFLOPs per instance",
    line_label: str = "test-time budget dial",
) -> str:
    """Plot accuracy against mask-head cost; two panels: segm AP and boundary AP (0–100) vs GFLOPs.

    ``points``: dicts with ``name``, ``gflops``, ``segm_AP`` and ``boundary_AP`` (a missing/None AP
    leaves that point out of its panel), optionally ``line: True`` for the points joined by one
    line in order of cost (the budget dial of one model). Labels are placed so that they do not
    overlap each other or the points. The file format follows the suffix of ``path`` (png, pdf,
    svg, ...); the file is written atomically.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = os.fspath(path)
    fig = Figure(figsize=(11, 4.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    panels = (("segm_AP", "mask AP"), ("boundary_AP", "boundary AP"))
    for ax, (key, label) in zip(axes, panels):
        xs, ys, names, on_line = [], [], [], []
        for p in points:
            x, y = p.get("gflops"), p.get(key)
            if x is None or y is None:
                continue
            x, y = float(x), float(y)
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            xs.append(x)
            ys.append(y)
            names.append(str(p.get("name", "")))
            on_line.append(bool(p.get("line")))
        if xs:
            line = sorted((x, y) for x, y, o in zip(xs, ys, on_line) if o)
            if len(line) > 1:
                ax.plot(
                    [x for x, _ in line],
                    [y for _, y in line],
                    "-",
                    color="tab:orange",
                    lw=1.5,
                    zorder=2,
                    label=line_label,
                )
                ax.legend(loc="lower right", fontsize=8)
            ax.scatter(xs, ys, s=36, zorder=3, color=["tab:orange" if o else "tab:blue" for o in on_line])
            pad_x = 0.18 * (max(xs) - min(xs) or max(abs(max(xs)), 1e-3))
            pad_y = 0.12 * (max(ys) - min(ys) or 1.0)
            ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
            ax.set_ylim(min(ys) - pad_y, max(ys) + pad_y)
            _place_labels(ax, fig, xs, ys, names)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{label} (0-100)")
        ax.set_title(f"{label} vs mask-head cost")
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    ext = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    with atomic_path(path, suffix="." + ext) as tmp:
        fig.savefig(tmp, format=ext)
    return path
