"""Old import paths of code that moved, kept working (PEP 562 module ``__getattr__``) with a
:class:`DeprecationWarning` that names the new place."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Iterable


def moved_names(old: str, new: str, names: Iterable[str] | None = None):
    """A module ``__getattr__`` for ``old``: ``names`` (every public name when None) are read from
    module ``new``, with a warning; anything else is the usual AttributeError."""
    wanted = None if names is None else frozenset(names)

    def __getattr__(name: str):
        if name.startswith("__") or (wanted is not None and name not in wanted):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(new), name)
        except AttributeError:
            raise AttributeError(f"module {old!r} has no attribute {name!r}") from None
        warnings.warn(
            f"{old}.{name} has moved to {new}.{name}; the old path will be removed", DeprecationWarning, stacklevel=2
        )
        return value

    return __getattr__
