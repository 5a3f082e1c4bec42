#!/usr/bin/env bash
# Regenerates the parity fixtures under runtime/tests/fixtures/parity/<arch>/:
# a tiny checkpoint written by `dfastllm demo-model` (committed, so the fixtures do not
# depend on the demo initialiser staying the same) and expected.json computed from it
# by transformers (scripts/parity/reference.py). CI never runs this: torch is ~5 GB.
#
#   scripts/parity/regen.sh            # both architectures
#   scripts/parity/regen.sh llada      # one
set -euo pipefail
cd "$(dirname "$0")/../.."

archs=("$@")
[[ ${#archs[@]} -gt 0 ]] || archs=(llada dream)

cargo build --release -p dfastllm-runtime --bin dfastllm >&2
PY=$(scripts/parity/venv.sh | tail -n1)

for arch in "${archs[@]}"; do
    dir=runtime/tests/fixtures/parity/$arch
    rm -rf "$dir"
    target/release/dfastllm demo-model --arch "$arch" --out "$dir" --seed 2024 \
        --layers 2 --hidden 64 --heads 4 --vocab 320 --max-context 256
    "$PY" scripts/parity/reference.py fixtures --arch "$arch" --model "$dir" --out "$dir/expected.json"
    echo "regen.sh: wrote $dir" >&2
done

# The bundled autoregressive model against LlamaForCausalLM (causal logits + greedy).
"$PY" scripts/parity/reference.py ar-fixture --model models/dfastllm-tiny-ar \
    --out runtime/tests/fixtures/parity/llama-ar/expected.json
echo "regen.sh: wrote runtime/tests/fixtures/parity/llama-ar" >&2
