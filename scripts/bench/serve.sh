#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: `dfastllm serve` on a model (default: the bundled
# trained LLaDA with the README's fast-decoding settings) on a free loopback port, then
# `dfastllm bench serve` across concurrency levels, writing the JSON report and the
# three PNG plots into OUT (default docs/benchmarks).
#
#   scripts/bench/serve.sh
#   MODEL=models/dfastllm-tiny-ar SERVE_ARGS="" OUT=/tmp/ar scripts/bench/serve.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${MODEL:-models/dfastllm-tiny-llada}
SERVE_ARGS=${SERVE_ARGS:-"--max-tokens 32 --block-length 8 --apd threshold --kv-cache dual"}
BENCH_ARGS=${BENCH_ARGS:-"--concurrency 1,2,4,8,16 --requests 64 --dataset models/eval/tasks-heldout.jsonl --output-tokens 32"}
OUT=${OUT:-docs/benchmarks}
THREADS=${THREADS:-$(nproc)}

cargo build --release -p dfastllm-runtime --bin dfastllm >&2
BIN=target/release/dfastllm
mkdir -p "$OUT"
log=$(mktemp)
# shellcheck disable=SC2086
"$BIN" --threads "$THREADS" serve --model "$MODEL" --host 127.0.0.1 --port 0 \
    --served-name bench-model --max-concurrent-requests 16 $SERVE_ARGS >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
addr=""
for _ in $(seq 1 600); do
    addr=$(grep -o '"addr":"[^"]*"' "$log" | head -n1 | cut -d'"' -f4 || true)
    if [[ -n $addr ]] && curl -sf "http://$addr/readyz" >/dev/null; then
        break
    fi
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $addr ]] || { echo "serve.sh: the server never became ready" >&2; exit 1; }
# shellcheck disable=SC2086
"$BIN" bench serve --url "http://$addr" $BENCH_ARGS --out "$OUT/results.json" --plot-dir "$OUT"
