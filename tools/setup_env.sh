#!/usr/bin/env bash
# Creates ./.venv (if missing) and installs dynamask with the pinned dev/CI torch build.
# With nothing to install it costs about a second: .venv/.setup-stamp holds the hash of
# requirements-dev.txt + pyproject.toml of the last complete install, and pip runs only when that
# hash differs or the environment no longer imports this checkout's dynamask and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.setup-stamp
want=$(cat requirements-dev.txt pyproject.toml | "$PY" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python - "$PWD/src" <<'EOF' 2>/dev/null
import sys, dynamask, pytest, xdist  # noqa: E401
sys.exit(0 if dynamask.__file__.startswith(sys.argv[1]) else 1)
EOF
then
    exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q -e ".[test,app]"
echo "$want" > "$STAMP"
