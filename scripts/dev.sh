#!/usr/bin/env bash
# One entry point for the README's two commands: `serve` (set up .venv, build the example models,
# `mlserver start ./settings`) and `test` (set up .venv, run the whole suite).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${MODELSERVE_EXTRAS:-sklearn,mlflow,huggingface,dev}

setup() {
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  local stamp=.venv/.modelserve-installed want
  want="$(cat pyproject.toml | sha256sum | cut -c1-16) $EXTRAS"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # The CPU torch wheel lies on disk; installed first so no later requirement pulls a CUDA build.
    .venv/bin/python -m pip install -q torch==2.13.0
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    echo "$want" > "$stamp"
  fi
  .venv/bin/python settings/build_examples.py
}

case "${1:-}" in
  setup) setup ;;
  serve) setup; shift; exec .venv/bin/mlserver start ./settings "$@" ;;
  test)  setup; shift; exec .venv/bin/python -m pytest "$@" ;;
  bench) setup; shift; exec .venv/bin/python benchmarks/sklearn_bench.py "$@" ;;
  *) echo "usage: $0 {setup|serve|test|bench}" >&2; exit 2 ;;
esac
