#!/usr/bin/env bash
# Regenerates the parity fixtures under runtime/tests/fixtures/parity/<arch>/:
# a tiny checkpoint written by `dfastllm demo-model` (committed, so the fixtures do not
# depend on the demo initialiser staying the same) and expected.json computed from it
# by transformers (scripts/parity/reference.py). CI never runs this: torch is ~5 GB.
#
#   scripts/parity/regen.sh            # every architecture, and the bundled AR model
#   scripts/parity/regen.sh llada phi  # some
set -euo pipefail
cd "$(dirname "$0")/../.."

archs=("$@")
[[ ${#archs[@]} -gt 0 ]] || archs=(llada dream llama qwen2 phi gpt2 llama3 llama-head-dim llama-ar samplers real-tinyllama real-llama-3.2 real-phi-2 real-qwen2.5)

# demo-model only writes files: the dev build (the one the tests use) is enough.
cargo build -p dfastllm-runtime --bin dfastllm >&2
PY=$(scripts/parity/venv.sh | tail -n1)

for arch in "${archs[@]}"; do
    dir=runtime/tests/fixtures/parity/$arch
    case $arch in
    llada | dream)
        rm -rf "$dir"
        target/debug/dfastllm demo-model --arch "$arch" --out "$dir" --seed 2024 \
            --layers 2 --hidden 64 --heads 4 --vocab 320 --max-context 256
        "$PY" scripts/parity/reference.py fixtures --arch "$arch" --model "$dir" --out "$dir/expected.json"
        ;;
    llama | qwen2 | phi | gpt2)
        rm -rf "$dir"
        target/debug/dfastllm demo-model --arch "$arch" --out "$dir" --seed 2024 \
            --layers 2 --hidden 64 --heads 4 --vocab 320 --max-context 256
        "$PY" scripts/parity/reference.py ar-fixture --model "$dir" --out "$dir/expected.json"
        ;;
    llama3)
        # Llama 3.1/3.2's rope_type llama3, with an original context small enough that
        # every regime (kept, interpolated, divided) shows in a 256-token table.
        rm -rf "$dir"
        target/debug/dfastllm demo-model --arch llama --out "$dir" --seed 2024 \
            --layers 2 --hidden 64 --heads 4 --vocab 320 --max-context 256
        python3 - "$dir/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["rope_theta"] = 500000.0
config["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 64, "rope_type": "llama3"}
json.dump(config, open(path, "w"), indent=2)
PY
        "$PY" scripts/parity/reference.py ar-fixture --model "$dir" --out "$dir/expected.json"
        ;;
    llama-head-dim)
        # head_dim 32 with hidden 64 and 4 heads (q and o are 128 wide), the weights
        # initialised and saved by transformers itself (its config.json too).
        rm -rf "$dir"
        target/debug/dfastllm demo-model --arch llama --out "$dir" --seed 2024 \
            --layers 2 --hidden 64 --heads 4 --vocab 320 --max-context 256
        "$PY" scripts/parity/reference.py transformers-init --model "$dir" --set head_dim=32 --seed 2024
        "$PY" scripts/parity/reference.py ar-fixture --model "$dir" --out "$dir/expected.json"
        ;;
    real-tinyllama | real-llama-3.2 | real-phi-2 | real-qwen2.5)
        # Real checkpoint metadata (runtime/tests/fixtures/real/<family>) shrunk by
        # `demo-model --like`; the weights are rebuilt by the test, not committed.
        family=${arch#real-}
        case $family in
        tinyllama) family=tinyllama-1.1b-chat-v1.0 ;;
        llama-3.2) family=llama-3.2-1b ;;
        qwen2.5) family=qwen2.5-0.5b-instruct ;;
        esac
        work=$(mktemp -d)
        mkdir -p "$work/source" "$dir"
        for f in runtime/tests/fixtures/real/$family/*; do
            name=$(basename "$f")
            case $name in
            *.gz) gunzip -c "$f" >"$work/source/${name%.gz}" ;;
            reference.json | LICENSE*) ;;
            *) cp "$f" "$work/source/" ;;
            esac
        done
        like='{"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "intermediate": 128, "seed": 2024, "dtype": "f32"}'
        target/debug/dfastllm demo-model --like "$work/source" --out "$work/model" --layers 2 --hidden 64 \
            --heads 4 --kv-heads 2 --intermediate 128 --seed 2024 --dtype f32
        extra=()
        # Llama-3.2's tokenizer is not among the fixtures: prompts as ids (BOS 128000 first).
        [[ $family == llama-3.2-1b ]] && extra=(--prompts --prompt-ids 128000,9906,11,1917,0 128000,755,16178,1471,997)
        "$PY" scripts/parity/reference.py real-ar-fixture --model "$work/model" --like "$like" \
            --out "$dir/expected.json" "${extra[@]}"
        rm -rf "$work"
        ;;
    samplers)
        # The autoregressive sampler against transformers' logits processors.
        mkdir -p "$dir"
        "$PY" scripts/parity/reference.py sampler-fixture --out "$dir/expected.json"
        ;;
    llama-ar)
        # The bundled autoregressive model (its weights stay under models/).
        mkdir -p "$dir"
        "$PY" scripts/parity/reference.py ar-fixture --model models/dfastllm-tiny-ar \
            --continue-tokens 16 --out "$dir/expected.json"
        ;;
    *)
        echo "regen.sh: unknown fixture $arch" >&2
        exit 2
        ;;
    esac
    echo "regen.sh: wrote $dir" >&2
done
