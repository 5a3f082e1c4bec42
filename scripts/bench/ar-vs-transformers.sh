#!/usr/bin/env bash
# Autoregressive generation throughput, dfastllm against transformers, measured side by
# side in one run on the same weights: a TinyLlama-1.1B-shaped Llama (22 layers, hidden
# 2048, 32 heads / 4 key-value heads, MLP 5632, vocab 32000) with RANDOM weights, f32,
# CPU, greedy, EOS ignored so every run generates the same number of tokens.
#
#   scripts/bench/ar-vs-transformers.sh                 # batch 1 and 8
#   BATCHES="1 4 8" MAX_TOKENS=64 scripts/bench/ar-vs-transformers.sh
#
# The checkpoint (4.4 GB) is written once by `dfastllm demo-model` under
# ~/.cache/dfastllm/bench/. transformers comes from the parity venv (scripts/parity/venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE=${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}
MODEL=$CACHE/bench/tinyllama-shaped-f32-seed0
THREADS=${THREADS:-$(nproc)}
PROMPT_LEN=${PROMPT_LEN:-32}
MAX_TOKENS=${MAX_TOKENS:-32}
REPEAT=${REPEAT:-3}
BATCHES=${BATCHES:-"1 8"}

cargo build --release -p dfastllm-runtime --bin dfastllm >&2
BIN=target/release/dfastllm
if [[ ! -f $MODEL/.complete ]]; then
    rm -rf "$MODEL"
    "$BIN" demo-model --arch llama --out "$MODEL" --seed 0 --layers 22 --hidden 2048 --heads 32 \
        --kv-heads 4 --intermediate 5632 --vocab 32000 --max-context 2048 --shards 4
    touch "$MODEL/.complete"
fi
PY=$(scripts/parity/venv.sh | tail -n1)

echo "batch impl tokens/s decode_tokens/s first_token_ms" >&2
for b in $BATCHES; do
    common=(--batch "$b" --prompt-len "$PROMPT_LEN" --max-tokens "$MAX_TOKENS" --repeat "$REPEAT")
    ours=$("$BIN" --threads "$THREADS" bench generate --model "$MODEL" --device cpu --dtype f32 "${common[@]}")
    theirs=$("$PY" scripts/bench/ar_reference.py --model "$MODEL" --threads "$THREADS" "${common[@]}")
    echo "$ours"
    echo "$theirs"
    "$PY" - "$ours" "$theirs" <<'PY' >&2
import json, sys
ours, theirs = (json.loads(a) for a in sys.argv[1:3])
for r in (ours, theirs):
    print(f"{r['batch']:>5} {r['impl']:<12} {r['tokens_per_s']:8.2f} {r['decode_tokens_per_s']:8.2f} {r['first_token_ms']:9.1f}")
print(f"      ratio ours/theirs: tokens/s {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
      f"decode {ours['decode_tokens_per_s'] / theirs['decode_tokens_per_s']:.2f}x")
PY
done
