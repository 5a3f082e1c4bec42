"""Tasks with checkable answers for the bundled tiny models.

Every example is a plain-text prompt and its exact answer, both ASCII, so each byte is one
token of the byte-level tokenizer that `dfastllm demo-model` writes. Four kinds, each with
a range of difficulty (length, carries):

  sort 52913=   -> 12359        sort the digits
  rev kqzpa=    -> apzqk        reverse the letters
  add 487+95=   -> 582          add two numbers
  sub a>e banana=  -> benene    copy, replacing one letter

`split(seed)` gives disjoint train / held-out sets: the held-out prompts never occur in
training.
"""

import random

LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORD_LETTERS = "abcdeilnorst"


def sort_example(rng):
    n = rng.randint(3, 9)
    digits = "".join(rng.choice("0123456789") for _ in range(n))
    return f"sort {digits}=", "".join(sorted(digits))


def rev_example(rng):
    n = rng.randint(3, 9)
    word = "".join(rng.choice(LETTERS) for _ in range(n))
    return f"rev {word}=", word[::-1]


def add_example(rng):
    a = rng.randint(0, 10 ** rng.randint(1, 4) - 1)
    b = rng.randint(0, 10 ** rng.randint(1, 4) - 1)
    return f"add {a}+{b}=", str(a + b)


def sub_example(rng):
    n = rng.randint(4, 9)
    word = "".join(rng.choice(WORD_LETTERS) for _ in range(n))
    src = rng.choice(word)
    dst = rng.choice([c for c in LETTERS if c != src])
    return f"sub {src}>{dst} {word}=", word.replace(src, dst)


KINDS = {"sort": sort_example, "rev": rev_example, "add": add_example, "sub": sub_example}


def example(rng):
    kind = rng.choice(sorted(KINDS))
    prompt, answer = KINDS[kind](rng)
    return {"kind": kind, "prompt": prompt, "answer": answer}


def heldout(seed, n):
    """n distinct held-out examples, balanced over the kinds."""
    rng = random.Random(seed)
    out, seen = [], set()
    kinds = sorted(KINDS)
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        prompt, answer = KINDS[kind](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"kind": kind, "prompt": prompt, "answer": answer})
    return out


def train_stream(seed, exclude):
    """Endless training examples, never one of the held-out prompts."""
    rng = random.Random(seed)
    while True:
        ex = example(rng)
        if ex["prompt"] not in exclude:
            yield ex


# The tool task, for the autoregressive model only: a chat whose template lists an `add`
# tool (scripts/train/tool_chat_template.jinja). Given the tool, the model answers
# `add A+B=` with a Hermes-style call `<tool_call>\n{"name": "add", "arguments": {"a": A,
# "b": B}}\n</tool_call>`; given the tool's result in a `tool` message, it answers with the
# result. The calls are what the runtime parses into OpenAI `tool_calls`.
ADD_TOOL = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}


def tool_call_text(a, b):
    import json

    return "<tool_call>\n" + json.dumps({"name": "add", "arguments": {"a": a, "b": b}}) + "\n</tool_call>"


def tool_example(rng, exclude):
    """One turn of the tool conversation: the call (first turn) or the answer (second)."""
    while True:
        prompt, answer = add_example(rng)
        if prompt not in exclude:
            break
    return tool_turn(prompt, answer, rng.random() < 0.5)


def tool_turn(prompt, answer, first):
    """The first turn (the call) or the second (the answer from the tool's result) of the
    tool conversation about `add` prompt `prompt` whose sum is `answer`."""
    a, b = (int(x) for x in prompt[len("add "):-1].split("+"))
    user = {"role": "user", "content": prompt}
    if first:
        return {"kind": "tool_call", "messages": [user], "answer": tool_call_text(a, b)}
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "add", "arguments": {"a": a, "b": b}},
    }
    messages = [
        user,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": answer},
    ]
    return {"kind": "tool_answer", "messages": messages, "answer": answer}


def ar_train_stream(seed, exclude, tool_share):
    """The autoregressive model's examples: the plain tasks and, `tool_share` of the time,
    a tool conversation."""
    rng = random.Random(seed)
    plain = train_stream(seed + 1, exclude)
    while True:
        if rng.random() < tool_share:
            yield tool_example(rng, exclude)
        else:
            yield next(plain)
