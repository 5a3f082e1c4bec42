#!/usr/bin/env bash
# The GPU check: one script for the `device` machine (an H100/H200, under 8 minutes) over
# the carried CUDA binary, and for the CPU at tiny shapes in `make test`, so it cannot
# rot. It checks, on DEVICE:
#   1. parity: logits on the device against the CPU in f32 (`dfastllm bench parity`; the
#      CPU path is the one the parity fixtures tie to transformers): f32 within 1e-4,
#      bf16 within 5% of the largest logit (bf16 keeps 8 bits of mantissa);
#   2. every decoding mode (`dfastllm eval`: baseline, threshold, factor, MoR, the
#      verifier; no cache, prefix, dual) on the bundled models, and the autoregressive
#      path (`generate`, `bench generate`);
#   3. `serve` + `bench serve` at each concurrency level on a TinyLlama-shaped and an
#      LLaDA-8B-shaped checkpoint (written here by `demo-model`; random weights);
#   4. forward time against the HBM roofline (weight bytes / bandwidth);
#   5. the NVML metrics in /metrics (GPU only).
# Results go to $OUT (the device tool's folder) or target/gpu-check, with summary.md.
#
#   scripts/gpu/check.sh                      # DEVICE=cuda, real shapes
#   DEVICE=cpu SHAPES=tiny scripts/gpu/check.sh   # what `make test` runs
set -euo pipefail
cd "$(dirname "$0")/../.."

DEVICE=${DEVICE:-cuda}
SHAPES=${SHAPES:-$([[ $DEVICE == cpu ]] && echo tiny || echo real)}
if [[ -z ${DFASTLLM_BIN:-} ]]; then
    DFASTLLM_BIN=target/cuda/dfastllm
    [[ -x $DFASTLLM_BIN ]] || DFASTLLM_BIN=target/debug/dfastllm
fi
BIN=$DFASTLLM_BIN
RESULTS=${OUT:-$PWD/target/gpu-check}
WORK=$(mktemp -d)
mkdir -p "$RESULTS"
SUMMARY=$RESULTS/summary.md
server=""
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "gpu/check.sh: $*" >&2; }
fail() { log "FAILED: $*"; echo "- FAILED: $*" >>"$SUMMARY"; exit 1; }
note() { echo "$*" >>"$SUMMARY"; echo "$*" >&2; }
# Reads key $2 from the one-line JSON object $1 (no jq on the device machine).
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1" | tr -d '"'; }

[[ -x $BIN ]] || fail "no binary at $BIN (build it: scripts/cuda/build.sh, or cargo build)"
: >"$SUMMARY"
note "# GPU check: $DEVICE, $SHAPES shapes, $($BIN --version)"
if command -v nvidia-smi >/dev/null; then
    note "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
fi
started=$SECONDS

# --- Checkpoints -----------------------------------------------------------------------
demo() { "$BIN" demo-model --out "$WORK/$1" "${@:2}" >/dev/null 2>&1 || fail "demo-model $*"; }
PARITY_MODELS=()
for arch in llada dream llama qwen2; do
    demo "$arch" --arch "$arch"
    PARITY_MODELS+=("$WORK/$arch")
done
PARITY_MODELS+=(models/dfastllm-tiny-llada models/dfastllm-tiny-ar)
TINYLLAMA_FIXTURE=runtime/tests/fixtures/real/tinyllama-1.1b-chat-v1.0
if [[ $SHAPES == real ]]; then
    demo tinyllama --like "$TINYLLAMA_FIXTURE" --dtype bf16
    demo llada8b --arch llada --layers 32 --hidden 4096 --heads 32 --intermediate 12288 \
        --vocab 126464 --max-context 4096 --dtype bf16
    LEVELS=1,8,32
    REQUESTS=64
else
    demo tinyllama --like "$TINYLLAMA_FIXTURE" --layers 2 --hidden 64 --heads 4 --kv-heads 1 --intermediate 128
    demo llada8b --arch llada --layers 2 --hidden 64 --heads 4 --intermediate 128
    LEVELS=1,4
    REQUESTS=8
fi
# The fixture's tokenizer is stored compressed; serving needs it whole.
gzip -dc "$TINYLLAMA_FIXTURE/tokenizer.json.gz" >"$WORK/tinyllama/tokenizer.json"
PARITY_MODELS+=("$WORK/tinyllama")

# --- 1. Parity --------------------------------------------------------------------------
note ""
note "## Parity against the CPU in f32 (64 positions)"
note "| model | dtype | max abs diff | largest logit | argmax agree |"
note "|---|---|---|---|---|"
for model in "${PARITY_MODELS[@]}"; do
    for dtype in f32 bf16; do
        if [[ $dtype == f32 ]]; then tol=(--tolerance 1e-4); else tol=(--relative-tolerance 0.05); fi
        out=$("$BIN" bench parity --model "$model" --device "$DEVICE" --dtype "$dtype" "${tol[@]}" 2>&1) \
            || fail "parity of $(basename "$model") in $dtype: $out"
        line=$(grep '^{' <<<"$out") || fail "parity of $(basename "$model") in $dtype printed no report: $out"
        note "| $(basename "$model") | $dtype | $(field "$line" max_abs_diff) | $(field "$line" max_abs_logit) | $(field "$line" argmax_agree)/$(field "$line" positions) |"
    done
done

# --- 2. Every decoding mode, and the autoregressive path ---------------------------------
note ""
note "## Decoding modes on the bundled models"
limit=$([[ $SHAPES == real ]] && echo 100 || echo 8)
"$BIN" eval --model models/dfastllm-tiny-llada --device "$DEVICE" --data models/eval/tasks-heldout.jsonl \
    --limit "$limit" --max-tokens 32 --block-length 8 --strategies baseline,threshold,factor,mor,threshold+mor,verifier \
    --kv-cache none,prefix,dual --apd-verifier models/dfastllm-tiny-ar >"$WORK/eval.md" 2>"$WORK/eval.err" \
    || fail "eval: $(tail -3 "$WORK/eval.err")"
cat "$WORK/eval.md" >>"$SUMMARY"
rows=$(grep -c '^| [a-z+]*/' "$WORK/eval.md" || true)
[[ $rows -ge 16 ]] || fail "eval printed $rows configurations, expected 16"
answer=$("$BIN" generate --model models/dfastllm-tiny-ar --device "$DEVICE" --prompt "sort 9081726=" \
    --max-tokens 32 2>/dev/null) || fail "generate on the autoregressive model"
[[ $answer == 0126789 ]] || fail "the bundled autoregressive model answered $answer, expected 0126789"
note ""
note "Autoregressive generate on $DEVICE: sort 9081726= -> $answer"
gen=$("$BIN" bench generate --model "$WORK/tinyllama" --device "$DEVICE" --batch 8 --prompt-len 32 \
    --max-tokens 32 --repeat 1 2>/dev/null) || fail "bench generate"
note "bench generate (TinyLlama-shaped, batch 8): $(grep '^{' <<<"$gen" || echo "$gen")"

# --- 3-5. Serve, bench serve, roofline, NVML --------------------------------------------
serve_and_bench() {
    local name=$1 model=$2
    local logfile=$WORK/serve-$name.log
    "$BIN" serve --model "$model" --device "$DEVICE" --host 127.0.0.1 --port 0 --served-name "$name" \
        --max-tokens 32 --max-concurrent-requests 32 >"$logfile" 2>&1 &
    server=$!
    local addr=""
    for _ in $(seq 1 3000); do
        addr=$(grep -o '"addr":"[^"]*"' "$logfile" | head -n1 | cut -d'"' -f4 || true)
        if [[ -n $addr ]] && curl -sf "http://$addr/readyz" >/dev/null; then break; fi
        kill -0 "$server" 2>/dev/null || fail "serve $name: $(tail -3 "$logfile")"
        sleep 0.2
    done
    curl -sf "http://$addr/readyz" >/dev/null || fail "serve $name never became ready"
    "$BIN" bench serve --url "http://$addr" --concurrency "$LEVELS" --requests "$REQUESTS" \
        --output-tokens 32 --out "$RESULTS/bench-$name.json" >"$WORK/bench-$name.md" 2>/dev/null \
        || fail "bench serve $name"
    note ""
    note "## serve + bench serve: $name"
    cat "$WORK/bench-$name.md" >>"$SUMMARY"
    curl -sf "http://$addr/metrics" >"$RESULTS/metrics-$name.txt" || fail "/metrics of $name"
    if [[ $DEVICE != cpu ]]; then
        # Every gauge is printed (0 without NVML): NVML answered when the board has memory.
        grep -q '"GPU memory guard on"' "$logfile" || fail "serve $name: the memory guard is off: $(grep 'memory guard' "$logfile")"
        for m in gpu_memory_total_bytes gpu_power_watts kv_cache_budget_bytes; do
            awk -v m="dfastllm_$m" '$1 == m && $2 > 0 { found = 1 } END { exit !found }' \
                "$RESULTS/metrics-$name.txt" || fail "/metrics of $name: dfastllm_$m is not above 0"
        done
        note "NVML metrics present: $(grep -E '^dfastllm_(gpu_[a-z_]+|kv_cache_budget_bytes) ' "$RESULTS/metrics-$name.txt" | tr '\n' ' ')"
    fi
    kill "$server" && wait "$server" 2>/dev/null || true
    server=""
}
serve_and_bench tinyllama "$WORK/tinyllama"
serve_and_bench llada8b "$WORK/llada8b"

note ""
note "## Forward time against the HBM roofline (batch 1, 128 tokens)"
# Bandwidth by board (bytes/s), overridable: H100 SXM 3.35 TB/s, H200 4.8 TB/s.
gpu_name=$(command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 || echo cpu)
case $gpu_name in
    *H200*) bandwidth=${HBM_BYTES_PER_S:-4800000000000} ;;
    *H100*) bandwidth=${HBM_BYTES_PER_S:-3350000000000} ;;
    *) bandwidth=${HBM_BYTES_PER_S:-} ;;
esac
note "| model | weight bytes | forward p50 ms | roofline ms | roofline / measured |"
note "|---|---|---|---|---|"
for name in tinyllama llada8b; do
    bytes=$(stat -c %s "$WORK/$name"/*.safetensors | awk '{ s += $1 } END { print s }')
    out=$("$BIN" bench forward --model "$WORK/$name" --device "$DEVICE" --seq-len 128 --iters 5 2>/dev/null) \
        || fail "bench forward $name"
    ms=$(field "$(grep '^{' <<<"$out" || true)" ms_p50)
    [[ -n $ms ]] || fail "bench forward $name printed no ms_p50: $out"
    if [[ -n $bandwidth ]]; then
        roof=$(awk -v b="$bytes" -v bw="$bandwidth" 'BEGIN { printf "%.3f", b / bw * 1000 }')
        ratio=$(awk -v r="$roof" -v m="$ms" 'BEGIN { printf "%.2f", r / m }')
    else
        roof="n/a (no HBM)"; ratio="n/a"
    fi
    note "| $name | $bytes | $ms | $roof | $ratio |"
done

note ""
note "Done in $((SECONDS - started)) s."
log "all checks passed; summary in $SUMMARY"
