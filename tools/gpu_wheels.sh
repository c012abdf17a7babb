#!/usr/bin/env bash
# Pure-Python-or-manylinux wheels the GPU machine lacks (it has torch, torchvision, numpy, yaml,
# opencv, matplotlib, tqdm, tensorboard; no pycocotools, no pydantic, no package registry).
# Downloads them into .whl/ (git-ignored through .git/info/exclude); a device call then carries
# ".whl" and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src || exit;
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
py=${GPU_PYTHON_VERSION:-3.12}
for spec in "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$spec"
done
ls -la .whl
