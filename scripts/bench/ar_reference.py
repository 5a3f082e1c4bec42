"""transformers' side of scripts/bench/ar-vs-transformers.sh: autoregressive generation
throughput of AutoModelForCausalLM on the prompts, lengths and thread count that
`dfastllm bench generate` uses, printed as the same JSON keys."""

import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def prompt(row, length):
    # The same ids as dfastllm's bench_prompt.
    return [(i * 7 + row * 13 + 3) % 250 for i in range(length)]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    ids = torch.tensor([prompt(r, args.prompt_len) for r in range(args.batch)])
    mask = torch.ones_like(ids)

    def run(n):
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, pad_token_id=0)
        elapsed = time.perf_counter() - start
        assert out.shape == (args.batch, args.prompt_len + n), out.shape
        return elapsed

    run(min(2, args.max_tokens))  # warm-up
    first = statistics.median(run(1) for _ in range(args.repeat))
    total = statistics.median(run(args.max_tokens) for _ in range(args.repeat))
    tokens = args.batch * args.max_tokens
    print(json.dumps({
        "impl": "transformers",
        "version": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "prompt_len": args.prompt_len,
        "max_tokens": args.max_tokens,
        "repeat": args.repeat,
        "first_token_ms": first * 1000.0,
        "total_s": total,
        "tokens_per_s": tokens / total,
        "decode_tokens_per_s": args.batch * (args.max_tokens - 1) / (total - first) if total > first else 0.0,
    }))


if __name__ == "__main__":
    main()
