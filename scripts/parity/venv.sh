#!/usr/bin/env bash
# Create (once) the Python virtual environment used by the parity reference
# script (scripts/parity/reference.py) and print its python interpreter path
# as the last line of stdout. All other output goes to stderr.
#
#   PY=$(scripts/parity/venv.sh | tail -n1)
#   "$PY" scripts/parity/reference.py fixtures --arch llada --model DIR --out F.json
#
# Environment:
#   DFASTLLM_CACHE   cache root (default: $HOME/.cache/dfastllm)
#   DFASTLLM_PYTHON  base interpreter used to create the venv (default: python3)
#
# torch from PyPI pulls the CUDA wheels (several GB); that is accepted.
set -euo pipefail

TORCH_VERSION=2.15.0
TRANSFORMERS_VERSION=5.23.0
SAFETENSORS_VERSION=0.8.0
NUMPY_VERSION=2.4.6

BASE_PY=${DFASTLLM_PYTHON:-python3}
if ! command -v "$BASE_PY" >/dev/null 2>&1; then
    echo "venv.sh: base interpreter '$BASE_PY' not found" >&2
    exit 1
fi
PY_TAG=$("$BASE_PY" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')

KEY="${PY_TAG}-torch${TORCH_VERSION}-tf${TRANSFORMERS_VERSION}-st${SAFETENSORS_VERSION}-np${NUMPY_VERSION}"
CACHE=${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}
VENV="$CACHE/parity-venv-$KEY"
MARKER="$VENV/.dfastllm-installed"
VPY="$VENV/bin/python"

if [[ -f "$MARKER" && -x "$VPY" ]]; then
    echo "$VPY"
    exit 0
fi

{
    echo "venv.sh: creating $VENV"
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    "$BASE_PY" -m venv "$VENV"
    "$VPY" -m pip install --disable-pip-version-check --quiet --upgrade pip
    "$VPY" -m pip install --disable-pip-version-check \
        "torch==${TORCH_VERSION}" \
        "transformers==${TRANSFORMERS_VERSION}" \
        "safetensors==${SAFETENSORS_VERSION}" \
        "numpy==${NUMPY_VERSION}"
    "$VPY" -c 'import torch, transformers, safetensors, numpy; print("venv.sh: torch", torch.__version__, "transformers", transformers.__version__)'
} 1>&2

touch "$MARKER"
echo "$VPY"
