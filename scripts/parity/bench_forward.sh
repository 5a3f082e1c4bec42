#!/usr/bin/env bash
# Times the same forward pass in dfastllm and in transformers, side by side, on the same
# weights and input shape, and prints both JSON lines plus the ratio.
#
#   scripts/parity/bench_forward.sh [ARCH] [BATCH] [SEQ_LEN] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-llada}; batch=${2:-1}; seq_len=${3:-64}; iters=${4:-50}
model=runtime/tests/fixtures/parity/$arch

cargo build --release -p dfastllm-runtime --bin dfastllm >&2
PY=$(scripts/parity/venv.sh | tail -n1)

# Same thread count on both sides: every core, then one.
for threads in "$(nproc)" 1; do
    ours=$(target/release/dfastllm --threads "$threads" bench forward --model "$model" --device cpu \
        --batch "$batch" --seq-len "$seq_len" --iters "$iters")
    theirs=$("$PY" scripts/parity/reference.py bench-forward --arch "$arch" --model "$model" \
        --batch "$batch" --seq-len "$seq_len" --iters "$iters" --threads "$threads")
    echo "$ours"
    echo "$theirs"
    python3 - "$ours" "$theirs" "$threads" <<'PY'
import json, sys
ours, theirs = (json.loads(s) for s in sys.argv[1:3])
print(f"threads {sys.argv[3]}: p50 ms dfastllm {ours['ms_p50']:.3f}, transformers {theirs['ms_p50']:.3f}; "
      f"dfastllm time / transformers time = {ours['ms_p50'] / theirs['ms_p50']:.2f}")
PY
done
