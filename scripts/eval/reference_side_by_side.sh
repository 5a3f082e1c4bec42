#!/usr/bin/env bash
# dfastllm's baseline decoding against LLaDA's reference decoding in transformers, on the
# same weights, eval set and machine, one after the other: greedy, low-confidence, one
# token per step over every block. Prints both rows, whether every answer is identical,
# and the speed ratio.
#   scripts/eval/reference_side_by_side.sh [MODEL_DIR] [DATA.jsonl]
# Env: LIMIT (first N examples, default all), THREADS (both sides, default 2),
#      GEN_LENGTH (32), BLOCK_LENGTH (8).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-models/dfastllm-tiny-llada}
DATA=${2:-models/eval/tasks-heldout.jsonl}
LIMIT=${LIMIT:-0}
THREADS=${THREADS:-2}
GEN=${GEN_LENGTH:-32}
BLOCK=${BLOCK_LENGTH:-8}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cargo build --release --quiet -p dfastllm-runtime --bin dfastllm
PY=$(scripts/parity/venv.sh | tail -n1)
limit_flag=()
[[ $LIMIT -gt 0 ]] && limit_flag=(--limit "$LIMIT")
target/release/dfastllm --threads "$THREADS" eval --model "$MODEL" --data "$DATA" \
  --strategies baseline --kv-cache none --max-tokens "$GEN" --block-length "$BLOCK" \
  "${limit_flag[@]}" --json >"$OUT/ours.json"
"$PY" scripts/parity/reference.py eval --arch llada --model "$MODEL" --data "$DATA" \
  --gen-length "$GEN" --block-length "$BLOCK" --threads "$THREADS" --limit "$LIMIT" >"$OUT/ref.json"
python3 - "$OUT/ours.json" "$OUT/ref.json" <<'PYEOF'
import json, sys
ours = json.load(open(sys.argv[1]))["rows"][0]
ref = json.load(open(sys.argv[2]))
same = sum(a == b for a, b in zip(ours["answers"], ref["answers"]))
n = ref["examples"]
print(f"| impl | accuracy | forward passes / answer | tokens / s | seconds |")
print(f"|---|---|---|---|---|")
print(f"| dfastllm | {ours['accuracy']:.1f}% | {ours['mean_forward_passes']:.1f} | {ours['tokens_per_second']:.0f} | {ours['seconds']:.1f} |")
print(f"| transformers | {ref['accuracy']:.1f}% | {ref['mean_forward_passes']:.1f} | {ref['tokens_per_second']:.0f} | {ref['seconds']:.1f} |")
print(f"identical answers: {same}/{n}")
print(f"dfastllm tokens/s over transformers: {ours['tokens_per_second'] / ref['tokens_per_second']:.2f}x")
for i, (a, b) in enumerate(zip(ours["answers"], ref["answers"])):
    if a != b:
        print(f"  differs at {i}: dfastllm {a!r} vs transformers {b!r}")
        break
sys.exit(0 if same == n else 1)
PYEOF
