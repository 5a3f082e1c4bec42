#!/usr/bin/env python3
"""Quick serving numbers on this machine, measured side by side in one run.

1. Answer tokens/s through `dfastllm serve` at concurrency 1, 4 and 16 (same model,
   same request shape), with the batch sizes the server reports.
2. The server's added latency: the same greedy request through HTTP vs `dfastllm
   generate --json` (the engine called directly, in-process; its elapsed_ms excludes
   model loading).

Stdlib only. Usage: scripts/bench/serve_quick.py [--bin target/release/dfastllm]
`dfastllm bench serve` (the benchmarks issue) replaces this with percentiles and plots.
"""
import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def metrics(base):
    with urllib.request.urlopen(base + "/metrics") as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("dfastllm_") and " " in line:
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/dfastllm")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests-per-worker", type=int, default=4)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp()
    model = os.path.join(tmp, "llada")
    subprocess.run([args.bin, "demo-model", "--arch", "llada", "--out", model, "--layers", "4",
                    "--hidden", "256", "--heads", "8", "--vocab", "512"], check=True, capture_output=True)
    proc = subprocess.Popen([args.bin, "serve", "--model", model, "--host", "127.0.0.1", "--port", "0",
                             "--max-concurrent-requests", "16", "--device", "cpu"],
                            stdout=subprocess.PIPE, text=True)
    base = None
    for line in proc.stdout:
        rec = json.loads(line)
        if rec.get("message") == "listening":
            base = "http://" + rec["addr"]
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/readyz")
            break
        except Exception:
            if time.time() > deadline:
                sys.exit("server not ready")
            time.sleep(0.1)

    shape = {"max_tokens": args.max_tokens, "temperature": 0}
    results = {}
    for c in (1, 4, 16):
        before = metrics(base)
        n = c * args.requests_per_worker
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(c) as pool:
            answers = list(pool.map(lambda i: post(base, {"prompt": f"request number {i}", **shape}), range(n)))
        wall = time.perf_counter() - start
        after = metrics(base)
        tokens = sum(a["usage"]["completion_tokens"] for a in answers)
        passes = after["dfastllm_forward_passes_total"] - before["dfastllm_forward_passes_total"]
        batch_sum = after["dfastllm_batch_size_sum"] - before["dfastllm_batch_size_sum"]
        results[c] = {"requests": n, "answer_tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
                      "forward_passes": passes, "mean_batch": batch_sum / max(passes, 1)}
        print(f"concurrency {c:2d}: {tokens / wall:8.1f} tokens/s  ({n} requests, {tokens} tokens, "
              f"{passes:.0f} forward passes, mean batch {batch_sum / max(passes, 1):.2f})")

    prompt = "The quick brown fox"
    http_ms, direct_ms = [], []
    for _ in range(10):
        t = time.perf_counter()
        post(base, {"prompt": prompt, **shape})
        http_ms.append((time.perf_counter() - t) * 1000)
        out = subprocess.run([args.bin, "generate", "--model", model, "--prompt", prompt, "--max-tokens",
                              str(args.max_tokens), "--device", "cpu", "--json"], check=True,
                             capture_output=True, text=True)
        direct_ms.append(json.loads(out.stdout)["elapsed_ms"])
    h, d = statistics.median(http_ms), statistics.median(direct_ms)
    print(f"one request, median of 10: HTTP {h:.2f} ms, engine direct {d:.2f} ms, added {h - d:.2f} ms "
          f"({(h - d) / d * 100:.1f}%)")
    print(f"throughput ratio 16 vs 1: {results[16]['tokens_per_s'] / results[1]['tokens_per_s']:.2f}x, "
          f"4 vs 1: {results[4]['tokens_per_s'] / results[1]['tokens_per_s']:.2f}x")
    proc.terminate()
    proc.wait()


if __name__ == "__main__":
    main()
