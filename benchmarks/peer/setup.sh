#!/usr/bin/env bash
# Creates benchmarks/peer/.venv: MLServer 1.7.1 + mlserver-huggingface 1.7.1 (the peer of
# benchmarks/huggingface_bench.py). It has its own venv because it needs transformers<4.42 and pulls
# in tensorflow, which the project's .venv must not get. Idempotent: redone only when
# requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
stamp=.venv/.peer-installed
want="$(sha256sum requirements.txt | cut -c1-16)"
if [ -x .venv/bin/mlserver ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU torch wheel lies on disk; installed first so no later requirement pulls a CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt
echo "$want" > "$stamp"
