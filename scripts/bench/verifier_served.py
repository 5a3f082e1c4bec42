#!/usr/bin/env python3
"""The APD verifier served, side by side with threshold + dual cache: for each
configuration, start `dfastllm serve` on the bundled LLaDA (the verifier with the bundled
autoregressive model beside it), send the held-out set at each concurrency level over
HTTP, and report accuracy, diffusion passes per answer and tokens/s, in one run.

    python3 scripts/bench/verifier_served.py [--bin target/debug/dfastllm] [--concurrency 1,8]

Only the standard library: it runs wherever the binary does.
"""
import argparse
import concurrent.futures
import json
import os
import subprocess
import threading
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
MODEL = os.path.join(ROOT, "models", "dfastllm-tiny-llada")
VERIFIER = os.path.join(ROOT, "models", "dfastllm-tiny-ar")
DATA = os.path.join(ROOT, "models", "eval", "tasks-heldout.jsonl")
COMMON = ["--max-tokens", "32", "--block-length", "8", "--max-concurrent-requests", "16"]
CONFIGS = [
    ("threshold 0.9 + dual cache", ["--apd", "threshold", "--kv-cache", "dual"]),
    ("verifier (R 0.7, lookahead 8)", ["--apd", "verifier", "--apd-verifier-model", VERIFIER]),
]


def start(binary, threads, extra):
    proc = subprocess.Popen(
        [binary, "--threads", str(threads), "serve", "--model", MODEL, "--host", "127.0.0.1",
         "--port", "0", *COMMON, *extra],
        stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("message") == "listening":
            base = f"http://{record['addr']}"
            break
    else:
        raise SystemExit("the server exited before listening")
    # Keep reading its log, or a full pipe would stall the server.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/readyz") as r:
                if r.status == 200:
                    return proc, base
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server never became ready")


def ask(base, prompt):
    body = json.dumps({"prompt": prompt, "max_tokens": 32, "temperature": 0}).encode()
    req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return (out["choices"][0]["text"], out["usage"]["completion_tokens"],
            out["dfastllm"]["forward_passes"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "dfastllm"))
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = p.parse_args()
    examples = [json.loads(line) for line in open(DATA)]
    levels = [int(c) for c in args.concurrency.split(",")]
    print("| config | concurrency | accuracy | diffusion passes / answer | tokens / s | tokens/s vs threshold+dual |")
    print("|---|---|---|---|---|---|")
    first = {}
    for name, extra in CONFIGS:
        proc, base = start(args.bin, args.threads, extra)
        try:
            ask(base, examples[0]["prompt"])  # warm-up
            for level in levels:
                started = time.perf_counter()
                with concurrent.futures.ThreadPoolExecutor(level) as pool:
                    results = list(pool.map(lambda e: ask(base, e["prompt"]), examples))
                seconds = time.perf_counter() - started
                right = sum(text == e["answer"] for (text, _, _), e in zip(results, examples))
                tokens = sum(t for _, t, _ in results)
                passes = sum(f for _, _, f in results) / len(results)
                rate = tokens / seconds
                first.setdefault(level, rate)
                print(f"| {name} | {level} | {100 * right / len(examples):.1f}% ({right}/{len(examples)}) "
                      f"| {passes:.2f} | {rate:.0f} | {rate / first[level]:.2f}x |", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
