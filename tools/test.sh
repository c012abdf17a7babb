#!/usr/bin/env bash
# Sets up ./.venv and runs the CPU test suite: one pytest-xdist worker per CPU (-n auto), each
# module kept whole on one worker (--dist loadfile: module fixtures are built once) and the longest
# modules handed out first (tests/conftest.py). Extra arguments go to pytest (-n 0: one process).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python -m pytest -q -n auto --dist loadfile --no-loadscope-reorder "$@"
