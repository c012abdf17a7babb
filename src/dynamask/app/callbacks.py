"""The callbacks of ``dynamask app``'s page, as plain functions of the page's values: tested
without a browser or the web library. They turn any :class:`DynaMaskError` into a message for the
page, so that bad input never stops the server.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DynaMaskError
from .viewer import GATED, NO_BUDGET, View, Viewer, read_image

COLOURS = "outline colour = chosen mask: red 14×14 · orange 28×28 · green 56×56 · blue 112×112"
TABLE_HEADERS = ["#", "class", "score", "mask", "mask MFLOPs"]
SAMPLE_COUNT = 6


class AppState:
    """What the server holds for every page: the model, the sample images, the download folder."""

    def __init__(self, viewer: Viewer, samples: dict[str, str], work_dir: os.PathLike | str):
        self.viewer = viewer
        self.samples = samples
        self.work_dir = Path(work_dir)
        self.runs = 0

    def write_downloads(self, view: View, image_name: str) -> list:
        """The overlay PNG and the shown detections as COCO JSON; the previous run's files go."""
        from ..atomic import write_bytes_atomic
        from ..visualize import write_png

        for old in self.work_dir.glob("run*"):
            old.unlink(missing_ok=True)
        self.runs += 1
        stem = f"run{self.runs}_{Path(image_name).stem}"
        overlay = write_png(self.work_dir / f"{stem}_overlay.png", view.overlay)
        coco = self.work_dir / f"{stem}_detections.json"
        write_bytes_atomic(coco, json.dumps(view.coco_results, indent=1).encode())
        return [overlay, str(coco)]


def sample_images(folder: os.PathLike | str, count: int = SAMPLE_COUNT) -> dict[str, str]:
    """The first validation images of the demo's detailed-shapes benchmark, those with both large
    simple and large detailed objects first (``dynamask demo``'s gallery choice): label → path."""
    from ..data import generate_shapes_dataset
    from ..engine.demo import DATA, gallery_images

    data = generate_shapes_dataset(folder, 0, 4 * count, **DATA)
    names = gallery_images(data["val_json"], count)
    return {f"shapes val {Path(n).stem}": os.path.join(data["val_dir"], n) for n in names}


def message_markdown(text: str | None) -> str:
    return f"**Error:** {text}" if text else ""


def summary_markdown(view: View, image_name: str, score_thresh: float) -> str:
    """The numbers of a run, as shown (the browser test reads them back)."""
    share = (
        f"{view.share * 100:.1f} % of the same head at fixed-112 ({view.reference_gflops:.3f} GFLOPs)"
        if view.share is not None
        else "no fixed-112 reference for this model"
    )
    if view.policy in ("dynamic", GATED):
        budget = "no budget" if view.budget >= NO_BUDGET else f"budget {view.budget:.3f}"
    else:
        budget = "budget not used by this policy"
    floor = f", score floor {view.score_floor:.3f}" if view.score_floor is not None else ""
    counts = " · ".join(f"{r}×{r}: {n}" for r, n in view.shown_counts.items() if r)
    mask = (
        f"mask branch {view.mask_seconds:.2f} s"
        if view.mask_seconds is not None
        else "mask branch not measured (exported file)"
    )
    return "\n\n".join(
        [
            f"**image:** {image_name} · **policy:** {view.policy} ({budget}{floor})",
            f"**mask GFLOPs on this image: {view.mask_gflops:.3f}** (all {view.detections} detections the mask "
            f"branch ran on) — {share}",
            f"**shown (score ≥ {score_thresh:.2f}): {len(view.rows)}** — {counts}",
            f"**latency of this run:** model {view.model_seconds:.2f} s, {mask} (CPU)",
        ]
    )


def render(app: AppState, source: list | None, policy: str, budget: float, score_thresh: float) -> tuple:
    """(message, overlay, fixed-112 overlay, summary, table rows, downloads) for the page."""
    empty = ("", None, None, "", [], None)
    if not source:
        return (message_markdown("pick a sample image or upload one"), *empty[1:])
    path, image_name = source
    try:
        image = read_image(path, image_name)
        view = app.viewer.run(image, path, policy, budget, score_thresh)
        downloads = app.write_downloads(view, image_name)
    except DynaMaskError as exc:
        return (message_markdown(str(exc)), *empty[1:])
    return ("", view.overlay, view.reference, summary_markdown(view, image_name, score_thresh), view.rows, downloads)


def pick_sample(app: AppState, label: str | None) -> list | None:
    """The source of a sample chosen by its label."""
    return [app.samples[label], label] if label in app.samples else None


def take_upload(upload) -> list | None:
    """The source of an uploaded file (a path, or an object with ``.name``)."""
    if upload is None:
        return None
    path = upload if isinstance(upload, (str, os.PathLike)) else getattr(upload, "name", None)
    return [os.fspath(path), os.path.basename(os.fspath(path))] if path else None


def control_settings(viewer: Viewer) -> dict:
    """Choices, range and state of the policy and budget controls for this model."""
    budget_on = viewer.budget_controls
    lowest = round(viewer.lowest_budget + 5e-4, 3) if budget_on else 0.0
    return {
        "policies": viewer.policies,
        "policy": viewer.policies[0],
        "policy_enabled": not viewer.exported and len(viewer.policies) > 1,
        "budget_min": lowest,
        "budget_enabled": budget_on,
        "note": viewer.controls_note
        or (
            f"The budget is the mean mask cost per instance as a fraction of the full "
            f"112×112 path (`model.mask_budget`): {lowest:.3f} puts every instance "
            f"at 14×14, 1 is no budget. It applies to `dynamic` and to the "
            f"score-gated control, whose floor is set per image so that it costs "
            f"what `dynamic` costs."
        ),
    }


def load_weights(app: AppState, upload) -> tuple:
    """A model uploaded in the page replaces the current one; a broken file leaves it loaded.
    Returns (message, model description, settings or None)."""
    source = take_upload(upload)
    if source is None:
        return "", app.viewer.describe(), None
    try:
        viewer = Viewer(source[0])
    except DynaMaskError as exc:
        return (
            message_markdown(f"{exc} — the previous model ({app.viewer.name}) stays loaded"),
            app.viewer.describe(),
            None,
        )
    app.viewer = viewer
    return "", viewer.describe(), control_settings(viewer)
