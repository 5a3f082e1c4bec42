"""Train the bundled tiny models on checkable tasks (scripts/train/tasks.py).

  python train_tiny.py --skeleton DIR --out-diffusion DIR --out-ar DIR --eval-out FILE

* A LLaDA-architecture diffusion model (bidirectional LLaMA) with the masked-diffusion SFT
  objective of LLaDA: the prompt is kept, each answer token is masked with probability t
  (t ~ U(eps, 1) per example), and the loss is the cross-entropy on the masked positions
  weighted by 1/t, normalised by the answer region's length. Answers are padded with EOS
  to the fixed generation length, as LLaDA's SFT does, so the model learns to end.
* An autoregressive LLaMA with the same tokenizer, trained with next-token cross-entropy on
  the answer (through its first EOS): the verifier of APD's `verifier` mode.

`--skeleton` is a `dfastllm demo-model --arch llada` directory: its tokenizer (byte-level,
LLaDA's special tokens) and config are reused, so the runtime reads the result exactly as
it reads any LLaDA checkpoint. Runs on the CPU with torch from PyPI; deterministic for a
given seed and thread count.
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "parity"))
import tasks  # noqa: E402
from reference import LLADA_BLOCK_MAP  # noqa: E402


def log(*args):
    print("[train]", *args, file=sys.stderr, flush=True)


class ByteCodec:
    """The demo tokenizer's ids: byte b is token b, specials follow from 256."""

    def __init__(self, skeleton):
        with open(os.path.join(skeleton, "config.json")) as f:
            cfg = json.load(f)
        self.mask = cfg["mask_token_id"]
        self.eos = cfg["eos_token_id"]
        self.pad = cfg.get("pad_token_id", self.eos)
        self.vocab = cfg["vocab_size"]
        # Check the assumption against the tokenizer itself.
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(skeleton, "tokenizer.json"))
        probe = "sort 52913=abc"
        ids = tok.encode(probe, add_special_tokens=False).ids
        if ids != list(probe.encode()):
            raise SystemExit(f"the skeleton's tokenizer is not byte-per-token: {ids}")

    @staticmethod
    def encode(text):
        return list(text.encode("ascii"))


TOOL_TOKENS = ("<tool_call>", "</tool_call>")
TOOL_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tool_chat_template.jinja")


def write_tool_tokenizer(skeleton, out):
    """The autoregressive model's tokenizer: the skeleton's, plus Qwen's `<tool_call>` and
    `</tool_call>` as added (not special) tokens in the two spare ids below vocab_size, and
    a chat template that carries tools (tool_chat_template.jinja)."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(os.path.join(skeleton, "tokenizer.json"))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    with open(os.path.join(skeleton, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    ids = [tok.token_to_id(t) for t in TOOL_TOKENS]
    if max(ids) >= vocab:
        raise SystemExit(f"no spare ids for the tool tokens below vocab_size {vocab}: {ids}")
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(skeleton, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    with open(TOOL_TEMPLATE) as f:
        cfg["chat_template"] = f.read()
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


class ChatEncoder:
    """Chat examples to token ids through transformers' own `apply_chat_template` (the
    reference the runtime's template rendering must agree with)."""

    def __init__(self, tokenizer_dir):
        from transformers import PreTrainedTokenizerFast

        self.tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)

    def prompt_ids(self, messages):
        text = self.tok.apply_chat_template(
            messages, tools=[tasks.ADD_TOOL], add_generation_prompt=True, tokenize=False
        )
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def text_ids(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]


def to_ids(codec, chat, example):
    """(prompt ids, answer ids without EOS) of a plain or a chat example."""
    if "messages" in example:
        return chat.prompt_ids(example["messages"]), chat.text_ids(example["answer"])
    return codec.encode(example["prompt"]), codec.encode(example["answer"])


def build_model(vocab, hidden, layers, heads, intermediate, max_pos):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        hidden_act="silu",
        max_position_embeddings=max_pos,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        use_cache=False,
    )
    # sdpa with an explicit additive mask: the same attention as eager, faster to train.
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def batch_tensors(codec, examples, gen_length, chat=None):
    """Left-padded [prompt | answer + EOS padding] rows with key mask and positions;
    `gen_length` None pads answers only to the longest in the batch (autoregressive)."""
    pairs = [to_ids(codec, chat, e) for e in examples]
    prompts = [p for p, _ in pairs]
    if gen_length is None:
        gen_length = max(len(a) for _, a in pairs) + 1
    answers = []
    for (_, a), e in zip(pairs, examples):
        a = a + [codec.eos]
        if len(a) > gen_length:
            raise SystemExit(f"answer longer than --gen-length: {e}")
        answers.append(a + [codec.eos] * (gen_length - len(a)))
    p_max = max(len(p) for p in prompts)
    rows, keep, ans_len = [], [], []
    for p, a, (_, raw) in zip(prompts, answers, pairs):
        pad = p_max - len(p)
        rows.append([codec.pad] * pad + p + a)
        keep.append([0] * pad + [1] * (len(p) + gen_length))
        ans_len.append(len(raw) + 1)
    ids = torch.tensor(rows, dtype=torch.long)
    keep = torch.tensor(keep, dtype=torch.bool)
    positions = (keep.long().cumsum(-1) - 1).clamp(min=0)
    return ids, keep, positions, p_max, torch.tensor(ans_len)


def bidirectional_bias(keep):
    bsz, seq = keep.shape
    bias = torch.zeros(bsz, 1, seq, seq)
    bias.masked_fill_(~keep[:, None, None, :], torch.finfo(torch.float32).min)
    return bias


def causal_bias(keep):
    bsz, seq = keep.shape
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    allowed = causal[None, None] & keep[:, None, None, :]
    bias = torch.zeros(bsz, 1, seq, seq)
    bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return bias


def lr_at(step, steps, peak, warmup):
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_diffusion(model, codec, stream, args):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    gen = torch.Generator().manual_seed(args.seed)
    model.train()
    t0, ema = time.time(), None
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        examples = [next(stream) for _ in range(args.batch)]
        ids, keep, positions, p_max, _ = batch_tensors(codec, examples, args.gen_length)
        t = (1 - args.eps) * torch.rand(args.batch, 1, generator=gen) + args.eps
        answer = torch.zeros_like(ids, dtype=torch.bool)
        answer[:, p_max:] = True
        masked = (torch.rand(ids.shape, generator=gen) < t) & answer
        noisy = torch.where(masked, torch.full_like(ids, codec.mask), ids)
        logits = model(
            input_ids=noisy, attention_mask=bidirectional_bias(keep), position_ids=positions
        ).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1), reduction="none")
        ce = ce.view(ids.shape) * masked / t
        loss = ce.sum() / (args.batch * args.gen_length)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 200 == 0 or step == args.steps - 1:
            log(f"diffusion step {step}/{args.steps} loss {ema:.4f} ({time.time() - t0:.0f}s)")
    model.eval()


def train_ar(model, codec, chat, stream, args):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    model.train()
    t0, ema = time.time(), None
    for step in range(args.ar_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.ar_steps, args.lr, args.warmup)
        examples = [next(stream) for _ in range(args.batch)]
        ids, keep, positions, p_max, ans_len = batch_tensors(codec, examples, None, chat)
        logits = model(
            input_ids=ids, attention_mask=causal_bias(keep), position_ids=positions
        ).logits
        # Position i predicts token i+1; learn the answer through its first EOS.
        target = ids[:, 1:]
        pred = logits[:, :-1]
        idx = torch.arange(ids.shape[1] - 1)[None, :] + 1
        weight = (idx >= p_max) & (idx < p_max + ans_len[:, None])
        ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
        loss = (ce.view(target.shape) * weight).sum() / weight.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 200 == 0 or step == args.ar_steps - 1:
            log(f"ar step {step}/{args.ar_steps} loss {ema:.4f} ({time.time() - t0:.0f}s)")
    model.eval()


@torch.inference_mode()
def greedy_diffusion_accuracy(model, codec, examples, gen_length):
    """One token per step, most confident first (a quick check, not the runtime's eval)."""
    ok = 0
    for e in examples:
        p = codec.encode(e["prompt"])
        x = torch.tensor([p + [codec.mask] * gen_length])
        for _ in range(gen_length):
            masked = x[0] == codec.mask
            if not masked.any():
                break
            logits = model(input_ids=x, attention_mask=torch.zeros(1, 1, x.shape[1], x.shape[1])).logits[0]
            probs = logits.softmax(-1)
            conf, tok = probs.max(-1)
            conf = torch.where(masked, conf, torch.tensor(-1.0))
            i = int(conf.argmax())
            x[0, i] = tok[i]
        out = x[0, len(p):].tolist()
        text = bytes(t for t in out[: out.index(codec.eos)] if t < 256) if codec.eos in out else b""
        ok += text.decode("ascii", "replace") == e["answer"]
    return ok / len(examples)


@torch.inference_mode()
def greedy_ar_accuracy(model, codec, examples, gen_length, chat=None):
    ok = 0
    for e in examples:
        x, want = to_ids(codec, chat, e)
        out = []
        for _ in range(gen_length):
            logits = model(input_ids=torch.tensor([x + out])).logits[0, -1]
            t = int(logits.argmax())
            if t == codec.eos:
                break
            out.append(t)
        ok += out == want
    return ok / len(examples)


def export_llada(model, skeleton, out, note, hidden, layers, heads, intermediate):
    from safetensors.torch import save_file

    if os.path.exists(out):
        shutil.rmtree(out)
    shutil.copytree(skeleton, out)
    for name in os.listdir(out):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            os.remove(os.path.join(out, name))
    inverse = {v: k for k, v in LLADA_BLOCK_MAP.items()}
    tensors = {}
    for name, t in model.state_dict().items():
        t = t.detach().float().contiguous().clone()
        if name == "model.embed_tokens.weight":
            tensors["model.transformer.wte.weight"] = t
        elif name == "model.norm.weight":
            tensors["model.transformer.ln_f.weight"] = t
        elif name == "lm_head.weight":
            tensors["model.transformer.ff_out.weight"] = t
        elif name.startswith("model.layers."):
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            tensors[f"model.transformer.blocks.{layer}.{inverse[module]}.{kind}"] = t
        elif "rotary" in name:
            continue
        else:
            raise SystemExit(f"unexpected parameter {name}")
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.pop("dfastllm_demo", None)
    cfg.update(
        {
            "d_model": hidden,
            "n_layers": layers,
            "n_heads": heads,
            "n_kv_heads": heads,
            "mlp_hidden_size": intermediate,
            "rope_theta": 10000.0,
            "torch_dtype": "float32",
            "dfastllm_trained": note,
        }
    )
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def export_ar(model, tokenizer_dir, out, codec, note):
    if os.path.exists(out):
        shutil.rmtree(out)
    model.config.bos_token_id = None
    model.config.eos_token_id = codec.eos
    model.config.pad_token_id = codec.pad
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(out, name))
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": codec.eos, "pad_token_id": codec.pad}, f, indent=2)
        f.write("\n")
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["dfastllm_trained"] = note
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skeleton", required=True)
    ap.add_argument("--out-diffusion", required=True)
    ap.add_argument("--out-ar", required=True)
    ap.add_argument("--eval-out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--ar-steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=400)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--ar-hidden", type=int, default=128)
    ap.add_argument("--ar-layers", type=int, default=2)
    ap.add_argument("--tool-share", type=float, default=0.2,
                    help="share of the autoregressive model's examples that are tool chats")
    ap.add_argument("--only-ar", action="store_true",
                    help="retrain the autoregressive model only (the diffusion model is kept)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    codec = ByteCodec(args.skeleton)
    held = tasks.heldout(args.seed + 1, args.heldout)
    exclude = {e["prompt"] for e in held}
    os.makedirs(os.path.dirname(os.path.abspath(args.eval_out)), exist_ok=True)
    with open(args.eval_out, "w") as f:
        for e in held:
            f.write(json.dumps({"prompt": e["prompt"], "answer": e["answer"], "kind": e["kind"]}) + "\n")
    log(f"{len(held)} held-out examples -> {args.eval_out}")

    d_secs = d_acc = None
    if not args.only_ar:
        started = time.time()
        dm = build_model(codec.vocab, args.hidden, args.layers, args.heads, args.intermediate, 256)
        log(f"diffusion model: {sum(p.numel() for p in dm.parameters())} parameters")
        train_diffusion(dm, codec, tasks.train_stream(args.seed, exclude), args)
        d_secs = time.time() - started
        d_acc = greedy_diffusion_accuracy(dm, codec, held[:100], args.gen_length)
        log(f"diffusion: {d_secs:.0f}s, quick greedy accuracy on 100 held-out: {d_acc:.2f}")
        note = (
            f"trained by scripts/train/train_tiny.py (seed {args.seed}, {args.steps} steps of "
            f"{args.batch}, masked-diffusion SFT on scripts/train/tasks.py)"
        )
        export_llada(dm, args.skeleton, args.out_diffusion, note, args.hidden, args.layers, args.heads, args.intermediate)

    started = time.time()
    ar = build_model(codec.vocab, args.ar_hidden, args.ar_layers, args.heads, args.ar_hidden * 3, 256)
    log(f"ar model: {sum(p.numel() for p in ar.parameters())} parameters")
    tok_dir = tempfile.mkdtemp()
    write_tool_tokenizer(args.skeleton, tok_dir)
    chat = ChatEncoder(tok_dir)
    stream = tasks.ar_train_stream(args.seed + 2, exclude, args.tool_share)
    train_ar(ar, codec, chat, stream, args)
    a_secs = time.time() - started
    a_acc = greedy_ar_accuracy(ar, codec, held[:100], args.gen_length)
    # Held-out tool chats: the held-out `add` prompts never occur in training.
    held_tools = []
    for e in [h for h in held if h["kind"] == "add"][:50]:
        for first in (True, False):
            held_tools.append(tasks.tool_turn(e["prompt"], e["answer"], first))
    t_acc = greedy_ar_accuracy(ar, codec, held_tools, 2 * args.gen_length, chat)
    log(f"ar: {a_secs:.0f}s, greedy accuracy on 100 held-out: {a_acc:.2f}, "
        f"on {len(held_tools)} held-out tool turns: {t_acc:.2f}")
    note_ar = (
        f"trained by scripts/train/train_tiny.py (seed {args.seed}, {args.ar_steps} steps of "
        f"{args.batch}, next-token loss on scripts/train/tasks.py, {args.tool_share:g} of them "
        f"tool chats)"
    )
    export_ar(ar, tok_dir, args.out_ar, codec, note_ar)
    shutil.rmtree(tok_dir)
    print(json.dumps({"diffusion_seconds": d_secs, "diffusion_quick_accuracy": d_acc,
                      "ar_seconds": a_secs, "ar_accuracy": a_acc, "ar_tool_accuracy": t_acc}))


if __name__ == "__main__":
    main()
