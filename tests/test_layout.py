"""The package's layout holds (issue 33): the data layer loads no model code, nothing imports in a
cycle, and code that moved keeps its old import path for a while, with a DeprecationWarning."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "dynamask"


def test_importing_the_data_layer_loads_no_model_code():
    code = "import sys, dynamask.data; print(sorted(m for m in sys.modules if m.startswith('dynamask.models')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert out.stdout.strip() == "[]", out.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The dynamask modules ``path`` imports, anywhere in it (a lazy import inside a function is a
    dependency too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = list(PACKAGE.rglob("*.py"))
    modules = {_module_name(f) for f in files}
    graph = {_module_name(f): _imports(f, modules) for f in files}
    for m in modules:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = m.split(".")
        for i in range(1, len(parts)):
            graph[m].add(".".join(parts[:i])) if ".".join(parts[:i]) != m else None
    return graph


def _edges() -> dict[str, set[str]]:
    # a package's __init__ importing its own submodules is how packages work, not a cycle to break
    return {m: {t for t in ts if t not in _parents(m)} for m, ts in _graph().items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def test_no_import_cycle():
    """Imports anywhere in a module count (a lazy import inside a function is a dependency too)."""
    cycles = _cycles(_edges())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_the_cycle_this_layout_removed():
    edges = _edges()
    edges["dynamask.models.geometry"].add("dynamask.models.paste")  # round_trip_masks' old lazy import
    assert any({"dynamask.models.geometry", "dynamask.models.paste"} <= set(c) for c in _cycles(edges))


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@pytest.mark.parametrize(
    "old, name, new",
    [
        ("dynamask.data", "yardstick_from_coco", "dynamask.evaluation.yardstick"),
        ("dynamask.data", "Yardstick", "dynamask.evaluation.yardstick"),
        ("dynamask.data.yardstick", "boundary_iou", "dynamask.evaluation.yardstick"),
        ("dynamask.data.resize_round_trip", "pipeline_round_trip_iou", "dynamask.evaluation.resize_round_trip"),
        ("dynamask.data.point_ceiling", "point_ceiling", "dynamask.evaluation.point_ceiling"),
        ("dynamask.models", "round_trip_iou", "dynamask.evaluation.round_trip"),
        ("dynamask.models.geometry", "round_trip_masks", "dynamask.evaluation.round_trip"),
    ],
)
def test_moved_names_keep_their_old_path_with_a_warning(old, name, new):
    import importlib

    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} has moved to {new}\.{name}"):
        value = getattr(module, name)
    assert value is getattr(importlib.import_module(new), name)
    assert not hasattr(module, "no_such_name")  # anything else is the usual AttributeError


#: files of one idea (issue 33): a source file past this many lines holds more than one
MAX_FILE_LINES = 500
#: a function past this many lines (``def`` to its last line) does more than one step
MAX_FUNCTION_LINES = 80


def _long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """Every function or method of ``source`` longer than ``limit`` lines, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, length))
    return found


def test_no_source_file_is_longer_than_its_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"split these files by idea (over {MAX_FILE_LINES} lines): {long}"


def test_no_function_is_longer_than_its_limit():
    long = {
        f"{p.relative_to(SRC)}:{name}": n
        for p in sorted(PACKAGE.rglob("*.py"))
        for name, n in _long_functions(p.read_text())
    }
    assert not long, f"split these functions into steps (over {MAX_FUNCTION_LINES} lines): {long}"


def test_the_length_check_counts_from_def_to_the_last_line():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    assert _long_functions(f"def f():\n{body}\n") == [("f", 81)]
    assert _long_functions(f"def f():\n{body}\n", limit=81) == []
    nested = "class A:\n    def method(self):\n        def inner():\n" + body.replace("    ", "            ") + "\n"
    assert [name for name, _ in _long_functions(nested)] == ["method", "inner"]
