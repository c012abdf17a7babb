"""``dynamask app``: a browser viewer of the budget dial (the ``[app]`` extra, on Gradio).

:mod:`.viewer` computes a view of one image (no web library), :mod:`.callbacks` are the page's
callbacks as plain functions, :mod:`.page` is the Gradio page and its server (:func:`serve`).
"""

from .viewer import GATED, MAX_SIDE, View, Viewer, default_weights, read_image

__all__ = ["GATED", "MAX_SIDE", "View", "Viewer", "default_weights", "read_image", "serve"]


def serve(*args, **kwargs):
    """:func:`dynamask.app.page.serve`, imported on use (Gradio is an optional extra)."""
    from .page import serve as _serve

    return _serve(*args, **kwargs)
