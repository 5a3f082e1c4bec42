#!/usr/bin/env bash
# Retrains the bundled models and their held-out set into models/ (PyTorch on the CPU
# from the parity venv; about 22 minutes for the diffusion model and 5 for the
# autoregressive one on 2 cores). Deterministic for a given seed and thread count.
#   scripts/train/train.sh [extra train_tiny.py flags]
# `--only-ar --ar-steps 3000` retrains only the autoregressive model (plain tasks plus the
# tool-calling chats, about 35 minutes on 2 cores), keeping the diffusion model.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p dfastllm-runtime --bin dfastllm
SKEL=$(mktemp -d)
trap 'rm -rf "$SKEL"' EXIT
# The tokenizer and config layout come from the runtime's own demo writer.
target/release/dfastllm demo-model --arch llada --layers 4 --hidden 128 --heads 4 \
  --intermediate 384 --vocab 264 --max-context 256 --out "$SKEL" >/dev/null
PY=$(scripts/parity/venv.sh | tail -n1)
"$PY" scripts/train/train_tiny.py --skeleton "$SKEL" \
  --out-diffusion models/dfastllm-tiny-llada --out-ar models/dfastllm-tiny-ar \
  --eval-out models/eval/tasks-heldout.jsonl --steps 5000 --ar-steps 2000 "$@"
