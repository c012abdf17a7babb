"""A benchmark script loaded as a module, for the tests of its pure parts.

The scripts live in ``benchmarks/`` (not a package) and import each other and ``common`` by
name, as ``python benchmarks/NAME.py`` puts that folder on ``sys.path``; loading one here does the
same for the duration of the import.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/NAME.py`` as a module (its ``main`` not run)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))
