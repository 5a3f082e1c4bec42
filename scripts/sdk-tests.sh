#!/usr/bin/env bash
# Drives a real `dfastllm serve` with the official `openai` Python SDK and curl.
# The SDK and pytest go into a venv cached under ~/.cache/dfastllm, keyed by version.
set -euo pipefail
cd "$(dirname "$0")/.."

OPENAI_VERSION=3.54.0
PYTEST_VERSION=9.2.0
CACHE=${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}
VENV=$CACHE/sdk-venv-openai$OPENAI_VERSION-pytest$PYTEST_VERSION
if [[ ! -f $VENV/.installed ]]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" "pytest==$PYTEST_VERSION"
    touch "$VENV/.installed"
fi

# The same build as `cargo test --workspace` (same feature set, so nothing recompiles
# after the Rust tests); it leaves the binary at target/debug/dfastllm.
cargo test --workspace --no-run --quiet
DFASTLLM_BIN=$PWD/target/debug/dfastllm "$VENV/bin/python" -m pytest -q runtime/tests/sdk "$@"
