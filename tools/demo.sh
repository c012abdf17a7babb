#!/usr/bin/env bash
# Sets up ./.venv and runs the offline demo: the shipped models evaluated (writes runs/demo/report.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup_env.sh
exec .venv/bin/dynamask demo --out runs/demo "$@"
