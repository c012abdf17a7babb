#!/usr/bin/env bash
# Sets up ./.venv and runs the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/python -m pytest -q "$@"
