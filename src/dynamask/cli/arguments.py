"""Argument types shared by the commands: ``type=`` callables for argparse that turn a bad value
into a usage error saying what was expected (exit status 2, no traceback)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (image counts, sizes, ports)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def non_negative_int(text: str) -> int:
    """An integer >= 0 (a split may have no images)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v}")
    return v


def unit_float(text: str) -> float:
    """A number in [0, 1] (score thresholds)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def budget_fraction(text: str) -> float:
    """A mask budget: a fraction of the full mask path's cost, in (0, 1]."""
    v = unit_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {v}")
    return v
