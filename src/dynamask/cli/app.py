"""``dynamask app``: serve the browser viewer (the ``[app]`` extra)."""

from __future__ import annotations

import argparse

from .arguments import positive_int
from .exit_status import EXIT_OK


def add_app(sub, common) -> None:
    p = sub.add_parser(
        "app",
        parents=[common],
        help="browser viewer: the mask budget as a slider (the [app] extra)",
        description="Serve a page (Gradio) that runs a model on a sample or uploaded image: overlay "
        "coloured by the chosen mask resolution beside the same head at fixed-112, "
        "budget slider and policy, per-instance table, mask GFLOPs, latency, downloads. "
        "Nothing is fetched from outside.",
    )
    p.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint (.pt) or exported model (.onnx, .ts) (default: the shipped DynaMask head)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=7860, help="port (default 7860)")
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    from ..app import serve

    serve(args.weights, args.host, args.port)
    return EXIT_OK
