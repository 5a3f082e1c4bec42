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
