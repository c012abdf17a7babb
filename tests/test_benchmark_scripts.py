"""Every benchmark script answers ``--help``, and the index lists every script.

The scripts run for minutes to hours, so the suite cannot run them; but a script whose imports
broke (a moved module, a renamed helper) fails already at ``--help``, which runs its module-level
code. Each runs in this process through ``runpy`` (a subprocess each would cost seconds of
start-up), with ``sys.argv``, ``sys.path`` and torch's thread count restored afterwards.
"""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
#: modules the scripts import, not scripts themselves
LIBRARIES = {"common.py"}
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name not in LIBRARIES)


def test_there_are_scripts():
    assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), "--help"])
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    threads = torch.get_num_threads()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    assert stop.value.code in (0, None), f"{script} --help exited with {stop.value.code}"
    text = out.getvalue()
    assert text.startswith("usage:"), f"{script} --help printed no usage:\n{text[:500]}"
    assert "--help" in text


def test_index_lists_every_script():
    index = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    missing = [s for s in SCRIPTS if f"`{s}`" not in index]
    assert not missing, f"benchmarks/README.md does not list {missing}"
