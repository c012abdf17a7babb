"""The Gradio page of ``dynamask app`` and the server that serves it.

Every event that touches the model shares one queue slot (``concurrency_id="model"``, limit 1): a
second request while one runs waits its turn. Nothing is fetched from outside: the environment
turns Gradio's analytics and Hugging Face lookups off before Gradio is imported, the theme's
fonts are the ones Gradio ships, and server-side rendering (a Node server) is off.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading

from . import callbacks as cb
from .viewer import NO_BUDGET, Viewer

OFFLINE_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_SSR_MODE": "False",
    "DO_NOT_TRACK": "1",
}


def import_gradio():
    """Gradio, imported with the offline settings in force; a clear error when the extra is missing."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import gradio
    except ImportError as exc:
        from ..errors import DynaMaskError

        raise DynaMaskError(f"dynamask app needs the [app] extra: pip install 'dynamask[app]' ({exc})") from None
    return gradio


def build_page(app: cb.AppState):
    """The page: inputs on the left, the two overlays, numbers, table and downloads on the right."""
    gr = import_gradio()
    settings = cb.control_settings(app.viewer)
    first = next(iter(app.samples), None)
    with gr.Blocks(title="dynamask: the mask budget dial", analytics_enabled=False, delete_cache=(600, 1800)) as page:
        gr.Markdown(
            "## dynamask — dynamic mask resolution, with the compute budget as a slider\n"
            "The shipped heads know only the synthetic shapes: for photos, start the app with your own "
            "`--weights`."
        )
        description = gr.Markdown(app.viewer.describe(), elem_id="dm-model")
        message = gr.Markdown("", elem_id="dm-message")
        source = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                sample = gr.Radio(
                    list(app.samples),
                    value=None,
                    label="sample images (detailed-shapes validation)",
                    elem_id="dm-sample",
                )
                upload = gr.UploadButton("upload an image", file_count="single", type="filepath", elem_id="dm-upload")
                threshold = gr.Slider(
                    0.0, 1.0, value=0.5, step=0.05, label="score threshold (shown instances)", elem_id="dm-threshold"
                )
                policy = gr.Radio(
                    settings["policies"],
                    value=settings["policy"],
                    label="policy",
                    interactive=settings["policy_enabled"],
                    elem_id="dm-policy",
                )
                budget = gr.Slider(
                    settings["budget_min"],
                    NO_BUDGET,
                    value=NO_BUDGET,
                    step=0.001,
                    label="mask budget (1 = no budget)",
                    interactive=settings["budget_enabled"],
                    elem_id="dm-budget",
                )
                note = gr.Markdown(settings["note"], elem_id="dm-note")
                weights = gr.UploadButton(
                    "load another model (.pt, .onnx, .ts)", file_count="single", type="filepath", elem_id="dm-weights"
                )
            with gr.Column(scale=3):
                gr.Markdown(cb.COLOURS)
                with gr.Row():
                    overlay = gr.Image(
                        label="this policy",
                        type="numpy",
                        format="png",
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="dm-overlay",
                    )
                    reference = gr.Image(
                        label="same head at fixed-112",
                        type="numpy",
                        format="png",
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="dm-reference",
                    )
                summary = gr.Markdown("", elem_id="dm-summary")
                table = gr.Dataframe(headers=cb.TABLE_HEADERS, interactive=False, elem_id="dm-table")
                downloads = gr.File(
                    label="downloads: overlay (PNG), shown detections (COCO JSON)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="dm-downloads",
                )
        _wire(gr, page, app, first, locals())
    return page


def _wire(gr, page, app: cb.AppState, first: str | None, c: dict) -> None:
    """The events: a new image or control value re-renders; a new model resets the controls."""
    outputs = [c["message"], c["overlay"], c["reference"], c["summary"], c["table"], c["downloads"]]
    controls = [c["source"], c["policy"], c["budget"], c["threshold"]]
    queue = dict(concurrency_limit=1, concurrency_id="model")

    def show(source, policy, budget, threshold):
        return cb.render(app, source, policy, budget, threshold)

    def choose(label):
        return cb.pick_sample(app, label)

    def new_model(upload):
        message, description, settings = cb.load_weights(app, upload)
        if settings is None:
            return message, description, gr.update(), gr.update(), gr.update()
        return (
            message,
            description,
            gr.update(choices=settings["policies"], value=settings["policy"], interactive=settings["policy_enabled"]),
            gr.update(minimum=settings["budget_min"], value=NO_BUDGET, interactive=settings["budget_enabled"]),
            settings["note"],
        )

    c["sample"].change(choose, c["sample"], c["source"], **queue).then(show, controls, outputs, **queue)
    c["upload"].upload(cb.take_upload, c["upload"], c["source"], **queue).then(show, controls, outputs, **queue)
    for control in (c["policy"], c["budget"], c["threshold"]):
        control.change(show, controls, outputs, trigger_mode="always_last", **queue)
    c["weights"].upload(
        new_model, c["weights"], [c["message"], c["description"], c["policy"], c["budget"], c["note"]], **queue
    ).then(show, controls, outputs, **queue)
    if first is not None:  # the page opens on the first sample, already rendered
        page.load(lambda: first, None, c["sample"])


def _stop(signum, frame):
    raise KeyboardInterrupt


def serve(weights: str | None = None, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Load the model, make the sample images and serve the page until interrupted."""
    import tempfile

    from .viewer import default_weights

    gr = import_gradio()
    viewer = Viewer(weights or default_weights())
    work_dir = tempfile.mkdtemp(prefix="dynamask-app-")
    if block and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)  # a terminated server cleans up as an interrupted one
    try:
        samples = cb.sample_images(os.path.join(work_dir, "samples"))
        app = cb.AppState(viewer, samples, os.path.join(work_dir, "downloads"))
        os.makedirs(app.work_dir, exist_ok=True)
        page = build_page(app)
        page.queue(default_concurrency_limit=1, max_size=32)
        page.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=not block,
            inbrowser=False,
            share=False,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            footer_links=[],
            max_file_size="64mb",
            allowed_paths=[work_dir],
            quiet=False,
            theme=gr.themes.Default(),
        )
    finally:
        if block:
            shutil.rmtree(work_dir, ignore_errors=True)
    return page
