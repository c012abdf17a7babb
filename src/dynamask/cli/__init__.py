"""Command line interface: ``dynamask <command>`` (also ``python -m dynamask``).

Commands: ``shapes`` (synthetic dataset), ``train``, ``evaluate``, ``calibrate``, ``predict``, ``export``,
``demo``, ``app`` (the browser viewer), ``config`` (the resolved configuration with each key's doc).
``dynamask <command> --help`` lists each command's options.

Errors in the user's input (config, paths, data) are reported as one line
``error: <message>`` on stderr with exit status 2; ``--debug`` (before or after
the command) shows the full traceback instead. An interrupted run exits with
status 130.

Each command lives in a module of its own (``dynamask.cli.<command>``) holding its parser
(``add_<command>``) and what it runs (``cmd_<command>``); this module puts them together and maps
errors to exit statuses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import DynaMaskError
from .app import add_app, cmd_app
from .calibrate import add_calibrate, cmd_calibrate
from .config import add_config, cmd_config
from .demo import add_demo, cmd_demo
from .evaluate import add_evaluate, cmd_evaluate
from .exit_status import EXIT_INTERRUPTED, EXIT_OK, EXIT_UNEXPECTED, EXIT_USER_ERROR
from .export import add_export, cmd_export
from .predict import add_predict, cmd_predict
from .shapes import add_shapes, cmd_shapes
from .torchrun import leave_torchrun_worker, under_torchrun
from .train import add_train, cmd_train

__all__ = [
    "main",
    "build_parser",
    "setup_logging",
    # kept importable from here: they moved to the command modules / exit_status
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_USER_ERROR",
    "EXIT_INTERRUPTED",
    "USER_ERRORS",
    "cmd_shapes",
    "cmd_train",
    "cmd_evaluate",
    "cmd_calibrate",
    "cmd_predict",
    "cmd_export",
    "cmd_demo",
    "cmd_app",
    "cmd_config",
]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DynaMaskHandler(logging.StreamHandler):
    """Marker class so that repeated setup_logging() calls do not add handlers."""


def setup_logging(level: int = logging.INFO) -> None:
    """Send ``dynamask.*`` log records to stderr (concise format).

    Under torchrun only rank 0 logs at ``level``; the other processes log warnings and errors.
    """
    rank = os.environ.get("RANK", "0").strip() or "0"
    log = logging.getLogger("dynamask")
    for h in list(log.handlers):
        if isinstance(h, _DynaMaskHandler):
            log.removeHandler(h)
    handler = _DynaMaskHandler(sys.stderr)
    fmt = _LOG_FORMAT if rank == "0" else f"[rank {rank}] {_LOG_FORMAT}"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(level if rank == "0" else max(level, logging.WARNING))
    log.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """The ``dynamask`` parser: one subparser per command, each added by its module, which also sets
    ``func`` to the command's ``cmd_*``; ``--debug`` is accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors"
    )

    parser = argparse.ArgumentParser(
        prog="dynamask",
        description="Instance segmentation with dynamic mask resolution (DynaMask) on torchvision.",
        epilog="Run 'dynamask <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"dynamask {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True

    add_shapes(sub, common)
    add_train(sub, common)
    add_evaluate(sub, common)
    add_calibrate(sub, common)
    add_predict(sub, common)
    add_export(sub, common)
    add_demo(sub, common)
    add_app(sub, common)
    add_config(sub, common)
    return parser


#: errors in the user's input, reported as one line (DatasetError and ConfigError derive from
#: DynaMaskError; DatasetError also from ValueError)
USER_ERRORS = (DynaMaskError, FileNotFoundError, PermissionError, OSError, ValueError)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    if isinstance(exc, OSError) and not isinstance(exc, DynaMaskError) and exc.filename and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    if not msg:
        msg = type(exc).__name__
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _rank_prefix() -> str:
    if under_torchrun():
        return f"[rank {os.environ.get('RANK', '?')}] "
    return ""


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, also accepting KEY=VALUE overrides after options (``train --out D a=1 --resume b=2``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = _parse(parser, argv)
    status = _run(args)
    leave_torchrun_worker(status)
    return status


def _run(args) -> int:
    """The command's exit status; without --debug an error is one line, never a traceback."""
    debug = bool(getattr(args, "debug", False))
    setup_logging(logging.DEBUG if debug else logging.INFO)
    if debug:
        return int(args.func(args) or 0)

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{_rank_prefix()}interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as exc:
        train_mod = sys.modules.get("dynamask.engine.train")  # only a training run can have been interrupted
        if train_mod is not None and isinstance(exc, train_mod.TrainingInterrupted):
            print(f"{_rank_prefix()}{_one_line(exc)}", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"{_rank_prefix()}error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # last resort: never a bare traceback without --debug
        print(
            f"{_rank_prefix()}error: unexpected {type(exc).__name__}: {_one_line(exc)} "
            f"(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED
