#!/usr/bin/env python3
"""Reference outputs for dfastllm parity tests, computed with HuggingFace transformers.

Loads a checkpoint in HF layout (as written by `dfastllm demo-model`: config.json +
model.safetensors, f32) into the stock PyTorch implementation that matches it

  * LLaDA -> transformers.LlamaForCausalLM (LLaDA is LLaMA without the causal mask)
  * Dream -> transformers.Qwen2ForCausalLM (same weight names; logits shifted right by one)

and runs it with *bidirectional* attention (eager attention, explicit additive 4D mask),
float32, on CPU.

Subcommands

  fixtures       --arch {llada,dream} --model DIR --out FILE.json
      Forward-pass logits (single sequence, left-padded batch) and greedy
      low-confidence-remasking generations, written as a JSON fixture.

  bench-forward  --arch {llada,dream} --model DIR --batch B --seq-len T --iters N [--threads K]
      Times N forward passes (after 2 warmups) and prints one JSON line.

Run it with the interpreter from scripts/parity/venv.sh:

  PY=$(scripts/parity/venv.sh | tail -n1)
  "$PY" scripts/parity/reference.py fixtures --arch llada --model DIR --out llada.json

Conventions shared with the Rust side
  * Output position i holds the logits that predict token i. For Dream (which predicts
    token i from hidden state i-1) that is raw[i-1] for i >= 1 and raw[0] at i = 0,
    applied to the padded grid as upstream Dream does. So in a left-padded Dream row the
    first real token's logits come from the last padding column (a padding query that
    attends to the real tokens, at position 0); every other real position equals the
    same sequence run alone. The first real token is always prompt, never decoded.
  * Padding is on the left; position ids are cumsum(mask) - 1 clamped at 0 (padding
    columns get 0); padding keys are hidden from every query, padding queries included.
  * Only positions whose attention_mask is 1 are meaningful.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

import torch
import transformers

GENERATOR = "scripts/parity/reference.py"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Checkpoint loading
# --------------------------------------------------------------------------------------


def read_config(model_dir):
    with open(os.path.join(model_dir, "config.json"), "r", encoding="utf-8") as f:
        return json.load(f)


def read_weights(model_dir):
    from safetensors.torch import load_file

    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        files = [single]
    else:
        index_path = os.path.join(model_dir, "model.safetensors.index.json")
        if not os.path.exists(index_path):
            raise SystemExit(f"no model.safetensors (or index) in {model_dir}")
        with open(index_path, "r", encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, s) for s in shards]
    weights = {}
    for path in files:
        for name, tensor in load_file(path).items():
            if tensor.dtype != torch.float32:
                log(f"note: {name} is {tensor.dtype}; converting to float32")
                tensor = tensor.float()
            weights[name] = tensor
    return weights


def require(cfg, key):
    if key not in cfg or cfg[key] is None:
        raise SystemExit(f"config.json is missing required field '{key}'")
    return cfg[key]


def default_rope(theta):
    return {"rope_type": "default", "rope_theta": float(theta)}


def check_llada_options(cfg):
    """Refuse LLaDA/OLMo options that would make the model differ from plain LLaMA."""
    expect = {
        "alibi": False,
        "rope": True,
        "scale_logits": False,
        "attention_layer_norm": False,
        "input_emb_norm": False,
        "multi_query_attention": None,
        "clip_qkv": None,
        "layer_norm_type": "rms",
        "activation_type": "silu",
        "block_type": "llama",
        "rope_full_precision": True,
    }
    for key, ok in expect.items():
        if key in cfg and cfg[key] is not None and cfg[key] != ok:
            # multi_query_attention=False is the same as None.
            if key == "multi_query_attention" and cfg[key] is False:
                continue
            raise SystemExit(f"unsupported LLaDA option {key}={cfg[key]!r} (expected {ok!r})")


LLADA_BLOCK_MAP = {
    "attn_norm": "input_layernorm",
    "ff_norm": "post_attention_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",
}


def llada_state_dict(weights, n_layers, tied):
    """Rename LLaDA (OLMo-style) tensor names to LlamaForCausalLM names."""
    out = {}
    for name, tensor in weights.items():
        parts = name.split(".")
        if name == "model.transformer.wte.weight":
            out["model.embed_tokens.weight"] = tensor
        elif name == "model.transformer.ln_f.weight":
            out["model.norm.weight"] = tensor
        elif name in ("model.transformer.ff_out.weight", "model.transformer.ff_out.bias"):
            out["lm_head." + parts[-1]] = tensor
        elif (
            len(parts) == 6
            and parts[:3] == ["model", "transformer", "blocks"]
            and parts[4] in LLADA_BLOCK_MAP
            and parts[5] in ("weight", "bias")
        ):
            layer = int(parts[3])
            if layer >= n_layers:
                raise SystemExit(f"tensor {name} has layer index >= n_layers={n_layers}")
            out[f"model.layers.{layer}.{LLADA_BLOCK_MAP[parts[4]]}.{parts[5]}"] = tensor
        else:
            raise SystemExit(f"unexpected tensor in LLaDA checkpoint: {name}")
    if tied:
        if "lm_head.weight" in out:
            raise SystemExit("weight_tying is true but model.transformer.ff_out.weight is present")
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def build_llada(cfg, weights):
    from transformers import LlamaConfig, LlamaForCausalLM

    check_llada_options(cfg)
    d_model = require(cfg, "d_model")
    n_heads = require(cfg, "n_heads")
    n_layers = require(cfg, "n_layers")
    n_kv_heads = cfg.get("n_kv_heads") or n_heads
    vocab_size = require(cfg, "vocab_size")
    embedding_size = cfg.get("embedding_size") or vocab_size
    if embedding_size < vocab_size:
        raise SystemExit(f"embedding_size {embedding_size} < vocab_size {vocab_size}")
    if d_model % n_heads != 0:
        raise SystemExit("d_model must be a multiple of n_heads")
    tied = bool(cfg.get("weight_tying", False))
    bias = bool(cfg.get("include_bias", False))
    hf_cfg = LlamaConfig(
        vocab_size=embedding_size,
        hidden_size=d_model,
        intermediate_size=require(cfg, "mlp_hidden_size"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.get("max_sequence_length", 4096),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_parameters=default_rope(cfg.get("rope_theta", 10000.0)),
        attention_bias=bias,
        mlp_bias=bias,
        attention_dropout=0.0,
        tie_word_embeddings=tied,
        use_cache=False,
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )
    hf_cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(hf_cfg)
    load_strict(model, llada_state_dict(weights, n_layers, tied))
    return model, embedding_size


def build_dream(cfg, weights):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if cfg.get("rope_scaling"):
        raise SystemExit(f"unsupported Dream rope_scaling={cfg['rope_scaling']!r}")
    if cfg.get("use_sliding_window"):
        raise SystemExit("unsupported Dream use_sliding_window=true")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise SystemExit(f"unsupported Dream hidden_act={act!r}")
    tied = bool(cfg.get("tie_word_embeddings", False))
    hf_cfg = Qwen2Config(
        vocab_size=require(cfg, "vocab_size"),
        hidden_size=require(cfg, "hidden_size"),
        intermediate_size=require(cfg, "intermediate_size"),
        num_hidden_layers=require(cfg, "num_hidden_layers"),
        num_attention_heads=require(cfg, "num_attention_heads"),
        num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        hidden_act="silu",
        max_position_embeddings=cfg.get("max_position_embeddings", 32768),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_parameters=default_rope(cfg.get("rope_theta", 10000.0)),
        use_sliding_window=False,
        attention_dropout=0.0,
        tie_word_embeddings=tied,
        use_cache=False,
        pad_token_id=cfg.get("pad_token_id"),
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
    )
    hf_cfg._attn_implementation = "eager"
    model = Qwen2ForCausalLM(hf_cfg)
    sd = dict(weights)
    if tied:
        if "lm_head.weight" in sd:
            raise SystemExit("tie_word_embeddings is true but lm_head.weight is present")
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    load_strict(model, sd)
    return model, hf_cfg.vocab_size


def load_strict(model, state_dict):
    expected = set(model.state_dict().keys())
    given = set(state_dict.keys())
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    model.load_state_dict(state_dict, strict=True)


class Reference:
    """A transformers model run with bidirectional attention, in our logits convention."""

    def __init__(self, arch, model_dir):
        self.arch = arch
        self.cfg = read_config(model_dir)
        weights = read_weights(model_dir)
        if arch == "llada":
            model, self.vocab = build_llada(self.cfg, weights)
        elif arch == "dream":
            model, self.vocab = build_dream(self.cfg, weights)
        else:
            raise SystemExit(f"unknown arch {arch}")
        impl = model.config._attn_implementation
        if impl != "eager":
            raise SystemExit(f"expected eager attention, transformers chose {impl!r}")
        for module in model.modules():
            # Only consulted by the sdpa/flash paths, but make the intent explicit.
            if hasattr(module, "is_causal"):
                module.is_causal = False
        self.model = model.float().eval()
        self.mask_id = require(self.cfg, "mask_token_id")
        pad = self.cfg.get("pad_token_id")
        if pad is None:
            pad = self.cfg.get("eos_token_id")
        if isinstance(pad, list):
            pad = pad[0]
        self.pad_id = 0 if pad is None else int(pad)

    @staticmethod
    def inputs(input_ids, attention_mask=None):
        """Additive [B,1,T,T] mask (0 = attend; min for padding keys) and position ids."""
        bsz, seq = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(bsz, seq, dtype=torch.long)
        keep = attention_mask.bool()
        bias = torch.zeros(bsz, 1, seq, seq, dtype=torch.float32)
        bias.masked_fill_(~keep[:, None, None, :], torch.finfo(torch.float32).min)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return bias, positions, attention_mask

    def raw(self, input_ids, bias, positions):
        out = self.model(
            input_ids=input_ids, attention_mask=bias, position_ids=positions, use_cache=False
        )
        return out.logits.float()

    def shift(self, raw):
        if self.arch != "dream":
            return raw
        # Dream's own convention: torch.cat([logits[:, :1], logits[:, :-1]], dim=1).
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)

    def logits(self, input_ids, attention_mask=None):
        bias, positions, _ = self.inputs(input_ids, attention_mask)
        with torch.inference_mode():
            return self.shift(self.raw(input_ids, bias, positions))


# --------------------------------------------------------------------------------------
# Generation: LLaDA-style semi-autoregressive low-confidence remasking (greedy)
# --------------------------------------------------------------------------------------


def commit_schedule(n_masked, steps):
    base, rem = divmod(n_masked, steps)
    return [base + 1 if s < rem else base for s in range(steps)]


def generate(ref, prompt_ids, gen_length, block_length, steps, margins):
    if gen_length % block_length != 0:
        raise SystemExit("gen_length must be a multiple of block_length")
    num_blocks = gen_length // block_length
    if steps % num_blocks != 0:
        raise SystemExit("steps must be a multiple of the number of blocks")
    steps_per_block = steps // num_blocks
    plen = len(prompt_ids)
    x = torch.tensor([list(prompt_ids) + [ref.mask_id] * gen_length], dtype=torch.long)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64)
    for b in range(num_blocks):
        start = plen + b * block_length
        end = start + block_length
        n_masked = int((x[0, start:end] == ref.mask_id).sum())
        for k in commit_schedule(n_masked, steps_per_block):
            if k == 0:
                continue
            masked = x[0] == ref.mask_id
            logits = ref.logits(x)[0]  # [T, V]
            x0 = logits.argmax(dim=-1)
            probs = torch.softmax(logits.double(), dim=-1)
            conf = probs.gather(-1, x0[:, None]).squeeze(-1)
            conf[end:] = neg_inf
            conf = torch.where(masked, conf, neg_inf)
            top = torch.topk(conf, k)
            x[0, top.indices] = x0[top.indices]
            # Diagnostics: how close were the decisions to a tie?
            top2 = logits[top.indices].topk(2, dim=-1).values
            margins["argmax"] = min(margins["argmax"], float((top2[:, 0] - top2[:, 1]).min()))
            cand = int(torch.isfinite(conf).sum())
            if cand > k:
                ranked = conf.topk(k + 1).values
                margins["topk"] = min(margins["topk"], float(ranked[k - 1] - ranked[k]))
    return x[0, plen:].tolist()


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


def byte_tokens(rng, n, forbid):
    out = []
    while len(out) < n:
        t = rng.randrange(0, 256)
        if t not in forbid:
            out.append(t)
    return out


def round_floats(values):
    return [float(f"{v:.7g}") for v in values]


def logits_json(logits):
    return [[round_floats(row) for row in seq] for seq in logits.tolist()]


def max_diff(a, b):
    return float((a - b).abs().max())


def cmd_fixtures(args):
    import transformers

    torch.set_grad_enabled(False)
    ref = Reference(args.arch, args.model)
    forbid = {ref.mask_id}
    log(f"{args.arch}: vocab(logits)={ref.vocab} mask_id={ref.mask_id} pad_id={ref.pad_id}")

    rng = random.Random(1234)
    single = byte_tokens(rng, 16, forbid)
    short = byte_tokens(rng, 11, forbid)
    prompt_a = byte_tokens(rng, 8, forbid)
    prompt_d = byte_tokens(rng, 10, forbid)

    # --- single sequence
    ids_single = torch.tensor([single], dtype=torch.long)
    mask_single = torch.ones_like(ids_single)
    logits_single = ref.logits(ids_single, mask_single)
    assert logits_single.shape == (1, 16, ref.vocab), logits_single.shape
    assert torch.isfinite(logits_single).all()

    # Bidirectionality: changing the LAST token must change EARLIER positions' logits.
    changed = list(single)
    changed[-1] = (changed[-1] + 1) % 256
    if changed[-1] in forbid:
        changed[-1] = (changed[-1] + 1) % 256
    logits_changed = ref.logits(torch.tensor([changed]), mask_single)
    early = (logits_changed[0, :-1] - logits_single[0, :-1]).abs().amax(dim=-1)
    log(f"bidirectional check: min over earlier positions of max|dlogit| = {float(early.min()):.3e}")
    assert bool((early > 1e-6).all()), "attention is not bidirectional (earlier logits unchanged)"

    # --- left-padded batch: row 0 = 11 real tokens (5 pads), row 1 = the 16-token sequence
    seq = 16
    pad_n = seq - len(short)
    ids_batch = torch.tensor([[ref.pad_id] * pad_n + short, single], dtype=torch.long)
    mask_batch = torch.tensor([[0] * pad_n + [1] * len(short), [1] * seq], dtype=torch.long)
    logits_batch = ref.logits(ids_batch, mask_batch)
    alone_short = ref.logits(torch.tensor([short]), None)
    # Dream: the first real column of a padded row reads the last padding column's hidden
    # state (see the module docstring), so compare from the next column on.
    skip = 1 if args.arch == "dream" else 0
    d0 = max_diff(logits_batch[0, pad_n + skip :], alone_short[0, skip:])
    d1 = max_diff(logits_batch[1], logits_single[0])
    log(f"padded batch vs alone: row0 max|d|={d0:.3e} row1 max|d|={d1:.3e}")
    assert d0 < 1e-4 and d1 < 1e-4, "padded batch rows differ from the sequences run alone"
    if args.arch == "dream":
        bias, positions, _ = ref.inputs(ids_batch, mask_batch)
        with torch.inference_mode():
            raw = ref.raw(ids_batch, bias, positions)
        assert max_diff(logits_batch[0, pad_n], raw[0, pad_n - 1]) == 0.0
    # Padding must be invisible: a different pad token gives the same logits at the real
    # positions that do not read a padding column.
    other_pad = (ref.pad_id + 1) % ref.vocab
    if other_pad == ref.mask_id:
        other_pad = (other_pad + 1) % ref.vocab
    ids_batch2 = ids_batch.clone()
    ids_batch2[0, :pad_n] = other_pad
    logits_batch2 = ref.logits(ids_batch2, mask_batch)
    d_pad = max_diff(logits_batch2[0, pad_n + skip :], logits_batch[0, pad_n + skip :])
    log(f"pad-token invariance: max|d|={d_pad:.3e}")
    assert d_pad < 1e-5, "padding keys leak into real positions"

    forward_cases = [
        {
            "name": "single",
            "input_ids": ids_single.tolist(),
            "attention_mask": mask_single.tolist(),
            "logits": logits_json(logits_single),
        },
        {
            "name": "padded_batch",
            "input_ids": ids_batch.tolist(),
            "attention_mask": mask_batch.tolist(),
            "logits": logits_json(logits_batch),
        },
    ]

    # --- generation
    specs = [
        ("gen16_block8_steps16", prompt_a, 16, 8, 16),
        ("gen16_block4_steps8", prompt_a, 16, 4, 8),
        ("gen8_block8_steps3", prompt_a, 8, 8, 3),
        ("gen16_block16_steps16_prompt2", prompt_d, 16, 16, 16),
    ]
    generate_cases = []
    for name, prompt, gen_length, block_length, steps in specs:
        margins = {"argmax": float("inf"), "topk": float("inf")}
        answer = generate(ref, prompt, gen_length, block_length, steps, margins)
        log(
            f"generate {name}: answer={answer} "
            f"min argmax logit gap={margins['argmax']:.3e} min top-k conf gap={margins['topk']:.3e}"
        )
        if margins["argmax"] < 1e-4 or margins["topk"] < 1e-6:
            log(f"WARNING: {name} has a near-tie; f32 implementations may legitimately disagree")
        generate_cases.append(
            {
                "name": name,
                "prompt_ids": list(prompt),
                "gen_length": gen_length,
                "block_length": block_length,
                "steps": steps,
                "remasking": "low_confidence",
                "temperature": 0.0,
                "mask_id": ref.mask_id,
                "answer_ids": answer,
            }
        )

    fixture = {
        "arch": args.arch,
        "generator": GENERATOR,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "forward_cases": forward_cases,
        "generate_cases": generate_cases,
    }
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, args.out)
    log(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------


def cmd_bench_forward(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch < 1 or args.seq_len < 1 or args.iters < 1:
        raise SystemExit("--batch, --seq-len and --iters must be >= 1")
    ref = Reference(args.arch, args.model)
    rng = random.Random(1234)
    ids = torch.tensor(
        [byte_tokens(rng, args.seq_len, {ref.mask_id}) for _ in range(args.batch)], dtype=torch.long
    )
    bias, positions, _ = Reference.inputs(ids)
    times = []
    with torch.inference_mode():
        for i in range(2 + args.iters):
            t0 = time.perf_counter()
            out = ref.shift(ref.raw(ids, bias, positions))
            dt = (time.perf_counter() - t0) * 1000.0
            if i >= 2:
                times.append(dt)
    assert out.shape == (args.batch, args.seq_len, ref.vocab)
    result = {
        "impl": "transformers",
        "arch": args.arch,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "iters": args.iters,
        "ms_mean": round(statistics.fmean(times), 4),
        "ms_min": round(min(times), 4),
        "ms_p50": round(statistics.median(times), 4),
    }
    print(json.dumps(result), flush=True)


def cmd_eval(args):
    """LLaDA's reference decoding (greedy, low-confidence, one token per step, every
    block) over a JSONL eval set: the Python side of `dfastllm eval`'s baseline row."""
    from tokenizers import Tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    ref = Reference(args.arch, args.model)
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    eos = ref.cfg.get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    with open(args.data, "r", encoding="utf-8") as f:
        examples = [json.loads(line) for line in f if line.strip()]
    if args.limit:
        examples = examples[: args.limit]
    margins = {"argmax": float("inf"), "topk": float("inf")}
    answers, correct, passes = [], 0, 0
    t0 = time.perf_counter()
    for ex in examples:
        ids = tok.encode(ex["prompt"], add_special_tokens=False).ids
        out = generate(ref, ids, args.gen_length, args.block_length, args.gen_length, margins)
        passes += args.gen_length
        end = next((i for i, t in enumerate(out) if t in eos_ids), len(out))
        text = tok.decode([t for t in out[:end] if t != ref.mask_id], skip_special_tokens=False)
        answers.append(text)
        correct += text.strip() == ex["answer"].strip()
    seconds = time.perf_counter() - t0
    n = len(examples)
    print(
        json.dumps(
            {
                "impl": "transformers",
                "examples": n,
                "correct": correct,
                "accuracy": 100.0 * correct / n,
                "mean_forward_passes": passes / n,
                "tokens_per_second": n * args.gen_length / seconds,
                "seconds": seconds,
                "answers": answers,
            }
        ),
        flush=True,
    )


def cmd_ar_fixture(args):
    """Logits and a greedy continuation of an autoregressive checkpoint (causal), loaded
    by AutoModelForCausalLM: LlamaForCausalLM, Qwen2ForCausalLM, PhiForCausalLM or
    GPT2LMHeadModel, whichever its config.json names."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").float().eval()
    log(f"{args.model}: {type(model).__name__}")
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    rows = [tok.encode(p, add_special_tokens=False).ids for p in args.prompts]
    out = {
        "model": os.path.basename(os.path.normpath(args.model)),
        "class": type(model).__name__,
        "generator": "scripts/parity/reference.py ar-fixture",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "rows": [],
    }
    with torch.inference_mode():
        for ids in rows:
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            greedy = list(ids)
            for _ in range(args.continue_tokens):
                nxt = int(model(input_ids=torch.tensor([greedy])).logits[0, -1].argmax())
                greedy.append(nxt)
            out["rows"].append(
                {"input_ids": ids, "logits": [round_floats(r) for r in logits.tolist()], "greedy": greedy[len(ids):]}
            )
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f)
        f.write("\n")
    log(f"wrote {args.out}")


def cmd_transformers_init(args):
    """Replaces the weights (and config.json) of a checkpoint directory with a model
    transformers itself initialises and saves, after applying --set overrides to its
    config: a checkpoint written by transformers, not by dfastllm."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.model)
    for item in args.set:
        key, value = item.split("=", 1)
        setattr(config, key, json.loads(value))
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            # transformers' 0.02 initialisation leaves logits near zero, a weak parity
            # test; larger matrices (norm weights stay one) make every layer count.
            if p.dim() > 1:
                p.normal_(0.0, args.std)
    for f in os.listdir(args.model):
        if f.endswith(".safetensors") or f == "model.safetensors.index.json":
            os.remove(os.path.join(args.model, f))
    model.save_pretrained(args.model)
    log(f"{args.model}: {type(model).__name__} saved by transformers {transformers.__version__}")


def cmd_sampler_fixture(args):
    """What transformers' own logits processors make of random logits: the repetition
    penalty, temperature, top-k and top-p in generate()'s order, as the support of the
    sampling distribution (id, probability), best first, and the greedy pick after the
    penalty. The runtime's sampler (decoding/next_token.rs) must give the same."""
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    gen = torch.Generator().manual_seed(args.seed)
    vocab = 64
    cases = [
        # (temperature, top_k, top_p, repetition_penalty)
        (1.0, 0, 1.0, None),
        (0.7, 0, 1.0, None),
        (1.0, 8, 1.0, None),
        (1.0, 0, 0.6, None),
        (0.8, 12, 0.9, None),
        (1.3, 0, 0.95, 1.1),
        (0.7, 20, 0.8, 1.05),  # Qwen2.5-Instruct's published defaults
        (1.0, 0, 1.0, 1.5),
        (1.0, 0, 1.0, 0.8),  # below 1 favours repeats
    ]
    out = {"generator": f"{GENERATOR} sampler-fixture", "torch_version": torch.__version__,
           "transformers_version": transformers.__version__, "vocab": vocab, "cases": []}
    for temperature, top_k, top_p, penalty in cases:
        logits = (torch.randn(vocab, generator=gen) * 2.0).tolist()
        logits = [float(f"{x:.6g}") for x in logits]
        seen = set(torch.randint(0, vocab, (10,), generator=gen).tolist())
        # The best raw token was seen too: a penalty then has a greedy pick to change.
        seen.add(max(range(vocab), key=lambda i: logits[i]))
        seen = sorted(seen)
        # Repeat a seen id in the ids, as a prompt does: the penalty applies once.
        input_ids = torch.tensor([seen + seen[:3]])
        processors = LogitsProcessorList()
        if penalty is not None:
            processors.append(RepetitionPenaltyLogitsProcessor(penalty))
        scores = processors(input_ids, torch.tensor([logits]))
        greedy = int(scores[0].argmax())
        warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
        if top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        probs = torch.softmax(warpers(input_ids, scores)[0].double(), dim=-1)
        support = [(i, p) for i, p in enumerate(probs.tolist()) if p > 0.0]
        support.sort(key=lambda t: -t[1])
        out["cases"].append({
            "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "repetition_penalty": penalty, "logits": logits, "seen": seen,
            "greedy": greedy, "support": [[i, round(p, 9)] for i, p in support],
        })
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    log(f"wrote {args.out}: {len(cases)} cases")


def cmd_real_ar_fixture(args):
    """Greedy parity on real checkpoint metadata: a `demo-model --like` checkpoint of a
    real config (random weights, shrunk; not committed, the test rebuilds it and checks
    the weights' CRC-32 first) loaded by AutoModelForCausalLM. Prompts go through the
    published tokenizer.json with its specials (BOS), or are given as ids when the
    checkpoint's tokenizer is not among the fixtures. Each greedy step records the top
    logits of the last position, so the test can stop comparing at a near tie."""
    import zlib

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation="eager").float().eval()
    log(f"{args.model}: {type(model).__name__}")
    tok_path = os.path.join(args.model, "tokenizer.json")
    rows = []
    if os.path.exists(tok_path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(tok_path)
        rows = [{"text": p, "input_ids": tok.encode(p).ids} for p in args.prompts]
    elif os.path.exists(os.path.join(args.model, "vocab.json")):
        # No tokenizer.json (Qwen2.5 here): transformers builds it from vocab + merges.
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        rows = [{"text": p, "input_ids": tok(p)["input_ids"]} for p in args.prompts]
    for ids in args.prompt_ids:
        rows.append({"input_ids": [int(i) for i in ids.split(",")]})
    weights = open(os.path.join(args.model, "model.safetensors"), "rb").read()
    out = {
        "generator": f"{GENERATOR} real-ar-fixture",
        "class": type(model).__name__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "like": json.loads(args.like),
        "weights_crc32": zlib.crc32(weights),
        "rows": [],
    }
    with torch.inference_mode():
        for row in rows:
            ids = list(row["input_ids"])
            steps = []
            for _ in range(args.continue_tokens):
                last = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
                top = torch.topk(last, args.top)
                steps.append({"ids": top.indices.tolist(), "logits": round_floats(top.values.tolist())})
                ids.append(int(top.indices[0]))
            row["greedy"] = ids[len(row["input_ids"]):]
            row["steps"] = steps
            out["rows"].append(row)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)
        f.write("\n")
    log(f"wrote {args.out}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    fx = sub.add_parser("fixtures", help="write a JSON parity fixture")
    fx.add_argument("--arch", required=True, choices=["llada", "dream"])
    fx.add_argument("--model", required=True, help="checkpoint directory (HF layout)")
    fx.add_argument("--out", required=True, help="output JSON file")
    fx.set_defaults(func=cmd_fixtures)

    bf = sub.add_parser("bench-forward", help="time forward passes")
    bf.add_argument("--arch", required=True, choices=["llada", "dream"])
    bf.add_argument("--model", required=True, help="checkpoint directory (HF layout)")
    bf.add_argument("--batch", type=int, required=True)
    bf.add_argument("--seq-len", type=int, required=True)
    bf.add_argument("--iters", type=int, required=True)
    bf.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    bf.set_defaults(func=cmd_bench_forward)

    ev = sub.add_parser("eval", help="reference decoding over a JSONL eval set")
    ev.add_argument("--arch", required=True, choices=["llada", "dream"])
    ev.add_argument("--model", required=True, help="checkpoint directory (HF layout)")
    ev.add_argument("--data", required=True, help="JSONL of {prompt, answer}")
    ev.add_argument("--gen-length", type=int, default=32)
    ev.add_argument("--block-length", type=int, default=8)
    ev.add_argument("--limit", type=int, default=0)
    ev.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    ev.set_defaults(func=cmd_eval)

    ar = sub.add_parser("ar-fixture", help="causal logits + greedy continuation fixture")
    ar.add_argument("--model", required=True, help="autoregressive checkpoint directory (HF layout)")
    ar.add_argument("--out", required=True, help="output JSON file")
    ar.add_argument("--continue-tokens", type=int, default=32)
    ar.add_argument("--prompts", nargs="+", default=["sort 52913=", "rev hello=", "add 47+85="])
    ar.set_defaults(func=cmd_ar_fixture)

    ti = sub.add_parser("transformers-init", help="a checkpoint initialised and saved by transformers")
    ti.add_argument("--model", required=True, help="checkpoint directory (config.json and tokenizer kept)")
    ti.add_argument("--set", nargs="*", default=[], help="config overrides, key=JSON")
    ti.add_argument("--seed", type=int, default=0)
    ti.add_argument("--std", type=float, default=0.1)
    ti.set_defaults(func=cmd_transformers_init)

    sf = sub.add_parser("sampler-fixture", help="transformers' logits processors on random logits")
    sf.add_argument("--out", required=True, help="output JSON file")
    sf.add_argument("--seed", type=int, default=2024)
    sf.set_defaults(func=cmd_sampler_fixture)

    ra = sub.add_parser("real-ar-fixture", help="greedy parity on a --like checkpoint of real metadata")
    ra.add_argument("--model", required=True, help="the demo-model --like output directory")
    ra.add_argument("--out", required=True, help="output JSON file")
    ra.add_argument("--like", required=True, help="the write_like arguments, as JSON (recorded for the test)")
    ra.add_argument("--continue-tokens", type=int, default=16)
    ra.add_argument("--top", type=int, default=5)
    ra.add_argument("--prompts", nargs="*", default=["Hello, world!", "def fib(n):", "Köln 🎉 is"])
    ra.add_argument("--prompt-ids", nargs="*", default=[], help="comma-separated ids (no tokenizer)")
    ra.set_defaults(func=cmd_real_ar_fixture)

    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
