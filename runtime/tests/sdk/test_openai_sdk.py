"""The official `openai` Python SDK (and curl) against a real `dfastllm serve` process.

Run by scripts/sdk-tests.sh, which installs the SDK into a cached venv, builds the
binary, and points DFASTLLM_BIN at it.
"""

import concurrent.futures
import json
import os
import re
import subprocess
import tempfile
import threading
import time
import urllib.request

import openai
import pytest

BIN = os.environ["DFASTLLM_BIN"]
KEY = "sk-dfastllm-test"


def wait_for(probe, check, limit=60.0, what="condition"):
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if check(last):
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what} not met within {limit}s; last saw {last!r}")


def http_status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "models")
BUNDLED = os.path.join(MODELS, "dfastllm-tiny-llada")
BUNDLED_AR = os.path.join(MODELS, "dfastllm-tiny-ar")


class Server:
    # `names` replaces the served name, alias and key flags (the vLLM spellings test).
    def __init__(self, arch, *extra, demo_args=(), model_dir=None, names=None):
        self.dir = tempfile.TemporaryDirectory()
        model = model_dir or os.path.join(self.dir.name, arch)
        if model_dir is None:
            subprocess.run([BIN, "demo-model", "--arch", arch, "--out", model, "--max-context", "512", *demo_args],
                           check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--model", model,
             *(names or ["--served-name", f"{arch}-demo", "--aliases", "gpt-3.5-turbo", "--api-keys", KEY]),
             "--host", "127.0.0.1", "--port", "0", *extra],
            stdout=subprocess.PIPE, text=True)
        for line in self.proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "listening":
                self.base = f"http://{record['addr']}"
                break
        else:
            raise AssertionError("the server exited before listening")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        wait_for(lambda: http_status(self.base + "/readyz"), lambda s: s == 200, what="/readyz 200")
        self.client = openai.OpenAI(base_url=self.base + "/v1", api_key=KEY, max_retries=0)

    def metrics(self):
        with urllib.request.urlopen(self.base + "/metrics") as r:
            return r.read().decode()

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.dir.cleanup()


# Every test taking `server` runs against the two diffusion architectures and two
# autoregressive ones.
@pytest.fixture(scope="module", params=["llada", "dream", "llama", "qwen2"])
def server(request):
    s = Server(request.param, "--batch-wait-ms", "300", "--max-tokens", "16")
    yield s
    s.close()


def test_completions(server):
    r = server.client.completions.create(model="gpt-3.5-turbo", prompt="Hello", max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    extra = r.model_extra["dfastllm"]
    assert extra["forward_passes"] >= 1 and extra["steps"] >= 1


def test_chat_multi_turn_with_system(server):
    r = server.client.chat.completions.create(
        model=server.client.models.list().data[0].id,
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Count to 3"}],
        max_tokens=8)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.usage.prompt_tokens > 20


def test_streaming_matches_non_streaming(server):
    whole = server.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=32, temperature=0)
    chunks = list(server.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=32,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage.prompt_tokens == 3
    chat = list(server.client.chat.completions.create(model="gpt-3.5-turbo", max_tokens=8, stream=True,
                                                      messages=[{"role": "user", "content": "Hi"}]))
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].choices[0].finish_reason in ("stop", "length")


def test_n_and_seeded_sampling(server):
    r = server.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=8, n=2,
                                         temperature=1.0, seed=3)
    assert sorted(c.index for c in r.choices) == [0, 1]
    again = server.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=8, n=2,
                                             temperature=1.0, seed=3)
    assert [c.text for c in r.choices] == [c.text for c in again.choices]


def test_stop_strings(server):
    free = server.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=16).choices[0].text
    if len(free) >= 2:
        stop = free[1]
        r = server.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=16, stop=[stop])
        assert stop not in r.choices[0].text
        assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs,param", [
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 9}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "x" * 600}, "prompt"),
    ({"max_tokens": 600}, "max_tokens"),
])
def test_bad_requests_are_400(server, kwargs, param):
    args = {"model": "gpt-3.5-turbo", "prompt": "x", "max_tokens": 8, **kwargs}
    with pytest.raises(openai.BadRequestError) as e:
        server.client.completions.create(**args)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param


def test_unknown_model_is_404_listing_names(server):
    with pytest.raises(openai.NotFoundError) as e:
        server.client.completions.create(model="gpt-9", prompt="x", max_tokens=4)
    assert "gpt-3.5-turbo" in e.value.message


def test_bad_key_is_401(server):
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=4)


def test_body_too_large_is_413(server):
    with pytest.raises(openai.APIStatusError) as e:
        server.client.completions.create(model="gpt-3.5-turbo", prompt="x" * (2 << 20), max_tokens=4)
    assert e.value.status_code == 413


def test_concurrent_requests_are_batched(server):
    def one(i):
        return server.client.completions.create(model="gpt-3.5-turbo", prompt=f"request {i}", max_tokens=16)
    before = server.metrics()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert all(r.choices for r in results)
    after = server.metrics()

    def batched(text):
        count = float(re.search(r"^dfastllm_batch_size_count (\S+)", text, re.M).group(1))
        single = float(re.search(r'^dfastllm_batch_size_bucket\{le="1.0"\} (\S+)', text, re.M).group(1))
        return count - single
    assert batched(after) > batched(before), "some forward pass ran more than one sequence"


def test_curl(server):
    # With keys on, /health tells an anonymous caller only that the process lives.
    out = subprocess.run(["curl", "-sS", server.base + "/health"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"status": "ok"}
    out = subprocess.run(["curl", "-sS", server.base + "/health", "-H", f"Authorization: Bearer {KEY}"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["ready"] is True
    out = subprocess.run(
        ["curl", "-sS", "-N", server.base + "/v1/completions", "-H", f"Authorization: Bearer {KEY}",
         "-H", "Content-Type: application/json",
         "-d", json.dumps({"model": "gpt-3.5-turbo", "prompt": "Hi", "max_tokens": 8, "stream": True})],
        capture_output=True, text=True, check=True)
    events = [l[len("data: "):] for l in out.stdout.splitlines() if l.startswith("data: ")]
    assert events[-1] == "[DONE]"
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", server.base + "/v1/models"],
                         capture_output=True, text=True, check=True)
    assert out.stdout == "401"


def test_rate_limit_is_429():
    s = Server("llada", "--rate-limit-rpm", "2")
    try:
        for _ in range(2):
            s.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=4)
        with pytest.raises(openai.RateLimitError) as e:
            s.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=4)
        assert e.value.status_code == 429
        assert e.value.response.headers.get("retry-after")
    finally:
        s.close()


def test_timeout_is_504_and_draining_is_503():
    # A 4-layer, 256-wide demo model: 500 decoding steps take several seconds on this
    # machine, far past a 1 s request timeout.
    s = Server("llada", "--request-timeout-seconds", "1", "--shutdown-grace-seconds", "60",
               demo_args=("--layers", "4", "--hidden", "256", "--heads", "8"))
    try:
        with pytest.raises(openai.APIStatusError) as e:
            s.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=500,
                                        extra_body={"block_length": 4})
        assert e.value.status_code == 504
    finally:
        s.close()

    # A grace period far longer than the request needs even on a busy CI machine (the
    # CUDA build may run beside these tests), so the drain, not the clock, decides.
    s = Server("llada", "--shutdown-grace-seconds", "600", "--request-timeout-seconds", "600",
               demo_args=("--layers", "4", "--hidden", "256", "--heads", "8"))
    try:
        results = {}
        long = threading.Thread(target=lambda: results.setdefault(
            "r", s.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=400,
                                             extra_body={"block_length": 8})))
        long.start()
        running = re.compile(r"^dfastllm_requests_running (\S+)", re.M)
        wait_for(lambda: float(running.search(s.metrics()).group(1)), lambda v: v == 1.0,
                 what="the long request running")
        s.proc.terminate()
        wait_for(lambda: http_status(s.base + "/readyz"), lambda c: c == 503, what="/readyz 503 while draining")
        with pytest.raises(openai.APIStatusError) as e:
            s.client.completions.create(model="gpt-3.5-turbo", prompt="y", max_tokens=4)
        assert e.value.status_code == 503
        long.join(timeout=600)
        assert results["r"].choices, "the in-flight request completed during the drain"
        assert s.proc.wait(timeout=600) == 0
    finally:
        s.dir.cleanup()


@pytest.fixture(scope="module")
def tiny():
    """The bundled trained model (models/dfastllm-tiny-llada)."""
    s = Server("llada", "--max-tokens", "32", "--block-length", "8", model_dir=BUNDLED)
    yield s
    s.close()


def test_bundled_model_answers_and_fast_decoding_is_chosen_per_request(tiny):
    def ask(**extra):
        r = tiny.client.completions.create(model="gpt-3.5-turbo", prompt="sort 9081726=", max_tokens=32,
                                           temperature=0, extra_body=extra)
        return r.choices[0].text, r.model_extra["dfastllm"]["forward_passes"]

    text, passes = ask()
    assert text == "0126789"
    fast_text, fast_passes = ask(apd={"mode": "threshold", "threshold": 0.9}, kv_cache="dual")
    assert fast_text == text
    assert fast_passes * 4 <= passes, (fast_passes, passes)
    factor_text, factor_passes = ask(apd={"mode": "factor", "factor": 1.0}, mor={"max_recursions": 1})
    assert factor_text == text and factor_passes < passes
    # The model was trained on plain prompts (no chat template): stream a completion.
    stream = tiny.client.completions.create(
        model="gpt-3.5-turbo", prompt="rev hello=", max_tokens=32, temperature=0, stream=True,
        extra_body={"apd": {"mode": "threshold"}, "kv_cache": "prefix"})
    assert "".join(c.choices[0].text for c in stream if c.choices) == "olleh"


@pytest.mark.parametrize("extra,param", [
    ({"apd": {"mode": "fastest"}}, "apd.mode"),
    ({"apd": {"mode": "threshold", "threshold": 1.5}}, "apd.threshold"),
    ({"apd": {"mode": "factor", "factor": 0}}, "apd.factor"),
    ({"apd": {"max_parallel": 0}}, "apd.max_parallel"),
    ({"kv_cache": "full"}, "kv_cache"),
    ({"mor": {"min_recursions": 3, "max_recursions": 1}}, "mor.min_recursions"),
])
def test_fast_decoding_fields_are_validated(tiny, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        tiny.client.completions.create(model="gpt-3.5-turbo", prompt="sort 21=", max_tokens=32, extra_body=extra)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param


# --- Autoregressive models -------------------------------------------------------------

@pytest.fixture(scope="module", params=["llama", "qwen2"])
def ar(request):
    s = Server(request.param, "--batch-wait-ms", "100", "--max-tokens", "16")
    yield s
    s.close()


def test_completion_logprobs(ar):
    r = ar.client.completions.create(model="gpt-3.5-turbo", prompt="Hello", max_tokens=8, temperature=0,
                                     logprobs=2, extra_body={"ignore_eos": True})
    c = r.choices[0]
    lp = c.logprobs
    assert r.usage.completion_tokens == 8 and c.finish_reason == "length"
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0.0
        assert len(top) == 2
        # Greedy: the chosen token is the most likely one.
        assert abs(chosen - max(top.values())) < 1e-5


def test_chat_logprobs_streamed_and_whole_agree(ar):
    args = dict(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hi"}], max_tokens=10,
                temperature=0, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    whole = ar.client.chat.completions.create(**args)
    content = whole.choices[0].logprobs.content
    assert len(content) == 10
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    streamed = [t for chunk in ar.client.chat.completions.create(stream=True, **args)
                if chunk.choices and chunk.choices[0].logprobs
                for t in chunk.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(abs(a.logprob - b.logprob) < 1e-5 for a, b in zip(streamed, content))


def test_top_k_one_is_greedy_and_seeds_repeat(ar):
    def text(**kw):
        return ar.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=12,
                                            **kw).choices[0].text
    greedy = text(temperature=0)
    assert text(temperature=1.5, extra_body={"top_k": 1}) == greedy
    sampled = [text(temperature=1.0, top_p=0.9, seed=s, extra_body={"top_k": 50}) for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]


def test_stop_token_ids_and_ignore_eos(ar):
    # The demo tokenizer is byte-level: an ASCII character's token id is its code.
    free = ar.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=16, temperature=0,
                                        extra_body={"ignore_eos": True})
    text = free.choices[0].text
    assert free.usage.completion_tokens == 16 and free.choices[0].finish_reason == "length"
    cut = next((i for i, ch in enumerate(text) if i > 0 and ch.isascii() and ch not in text[:i]), None)
    if cut is not None:
        r = ar.client.completions.create(model="gpt-3.5-turbo", prompt="abc", max_tokens=16, temperature=0,
                                         extra_body={"ignore_eos": True, "stop_token_ids": [ord(text[cut])]})
        assert r.choices[0].text == text[:cut]
        assert r.choices[0].finish_reason == "stop"


def test_batch_of_different_prompt_lengths(ar):
    prompts = ["a", "a much longer prompt than the first", "mid length"]
    alone = [ar.client.completions.create(model="gpt-3.5-turbo", prompt=p, max_tokens=12, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].text for p in prompts]
    together = ar.client.completions.create(model="gpt-3.5-turbo", prompt=prompts, max_tokens=12, temperature=0,
                                            extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(together.choices, key=lambda c: c.index)] == alone


@pytest.mark.parametrize("extra,param", [
    ({"block_length": 4}, "block_length"),
    ({"apd": {"mode": "threshold"}}, "apd"),
    ({"top_k": -3}, "top_k"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
])
def test_ar_fields_are_validated(ar, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        ar.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=4, extra_body=extra)
    assert e.value.body["param"] == param


def test_diffusion_logprobs_are_reported_at_commit(tiny):
    args = dict(model="gpt-3.5-turbo", prompt="sort 9081726=", max_tokens=32, temperature=0, logprobs=2)
    r = tiny.client.completions.create(**args)
    c = r.choices[0]
    assert c.text == "0126789"
    lp = c.logprobs
    assert "".join(lp.tokens) == c.text
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0.0 and len(top) == 2
        # Greedy: each token was the argmax of the pass that committed it.
        assert abs(chosen - max(top.values())) < 1e-5
    streamed = [(t, l) for chunk in tiny.client.completions.create(stream=True, **args) if chunk.choices
                and chunk.choices[0].logprobs
                for t, l in zip(chunk.choices[0].logprobs.tokens, chunk.choices[0].logprobs.token_logprobs)]
    assert [t for t, _ in streamed] == lp.tokens
    assert all(abs(a - b) < 1e-5 for (_, a), b in zip(streamed, lp.token_logprobs))
    # Fast decoding commits several tokens a pass; each still carries its own number.
    fast = tiny.client.completions.create(extra_body={"apd": {"mode": "threshold", "threshold": 0.9}}, **args)
    assert fast.choices[0].text == c.text and len(fast.choices[0].logprobs.token_logprobs) == len(lp.tokens)
    with pytest.raises(openai.BadRequestError) as e:
        tiny.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=8, extra_body={"top_k": 5})
    assert e.value.body["param"] == "top_k"


def test_apd_verifier_is_served_batched_and_checked(tiny):
    with pytest.raises(openai.BadRequestError) as e:
        tiny.client.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=8,
                                       extra_body={"apd": {"mode": "verifier"}})
    assert e.value.body["param"] == "apd.mode" and "--apd-verifier-model" in e.value.body["message"]
    s = Server("llada", "--max-tokens", "32", "--block-length", "8", "--batch-wait-ms", "300",
               "--apd-verifier-model", BUNDLED_AR, model_dir=BUNDLED)
    try:
        def ask(prompt, **extra):
            return s.client.completions.create(model="gpt-3.5-turbo", prompt=prompt, max_tokens=32,
                                               temperature=0, extra_body=extra)
        base = ask("sort 9081726=")
        verified = ask("sort 9081726=", apd={"mode": "verifier"})
        assert verified.choices[0].text == base.choices[0].text == "0126789"
        passes = lambda r: r.model_extra["dfastllm"]["forward_passes"]
        assert passes(verified) < passes(base), (passes(verified), passes(base))
        # Verifier requests beside each other and beside another rule, in one batch.
        prompts = ["sort 9081726=", "rev hello=", "sort 5417=", "rev abcde="]
        alone = [ask(p, apd={"mode": "verifier"}).choices[0].text for p in prompts]
        before = s.metrics()
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            futures = [pool.submit(ask, p, apd={"mode": "verifier"}) for p in prompts]
            other_future = pool.submit(ask, "sort 9081726=", apd={"mode": "threshold"})
            together, other = [f.result() for f in futures], other_future.result()
        after = s.metrics()
        assert [r.choices[0].text for r in together] == alone, "batching does not change answers"
        assert other.choices[0].text == "0126789"
        steps = lambda text: float(re.search(r"^dfastllm_forward_passes_total (\S+)", text, re.M).group(1))
        assert steps(after) - steps(before) < sum(passes(r) for r in together) + passes(other), \
            "the verifier requests shared their passes"
        for extra, param in [({"apd": {"mode": "verifier"}, "kv_cache": "dual"}, "kv_cache"),
                             ({"apd": {"mode": "verifier"}, "mor": {"enabled": True}}, "mor"),
                             ({"apd": {"mode": "verifier", "mix": 2}}, "apd.mix"),
                             ({"apd": {"mode": "verifier", "max_lookahead": 0}}, "apd.max_lookahead"),
                             ({"apd": {"mode": "threshold", "mix": 0.5}}, "apd.mix")]:
            with pytest.raises(openai.BadRequestError) as e:
                ask("sort 21=", **extra)
            assert e.value.body["param"] == param, (extra, e.value.body)
    finally:
        s.close()


def test_bundled_ar_model_answers_and_stops_at_eos():
    s = Server("llama", "--max-tokens", "32", model_dir=BUNDLED_AR)
    try:
        r = s.client.completions.create(model="gpt-3.5-turbo", prompt="sort 9081726=", max_tokens=32, temperature=0)
        assert r.choices[0].text == "0126789"
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.completion_tokens == 7
        stream = s.client.completions.create(model="gpt-3.5-turbo", prompt="rev hello=", max_tokens=32,
                                             temperature=0, stream=True)
        pieces = [c.choices[0].text for c in stream if c.choices]
        assert "".join(pieces) == "olleh"
        assert len([p for p in pieces if p]) >= 2, "streamed token by token"
    finally:
        s.close()


REAL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "real")


def as_sent(messages):
    """A recorded conversation as OpenAI clients send it: a call's arguments as JSON text
    (transformers' templates take the object, which the runtime parses it back into)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out


def real_like(family, out):
    """A `demo-model --like` checkpoint of a real model's published metadata (the
    fixture's compressed vocabularies unpacked first, as a download holds them)."""
    import gzip
    import shutil

    source = os.path.join(out, "source")
    os.makedirs(source)
    for name in os.listdir(os.path.join(REAL, family)):
        path = os.path.join(REAL, family, name)
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as i, open(os.path.join(source, name[:-3]), "wb") as o:
                shutil.copyfileobj(i, o)
        else:
            shutil.copy(path, source)
    model = os.path.join(out, "model")
    subprocess.run([BIN, "demo-model", "--like", source, "--out", model, "--layers", "1", "--hidden", "64",
                    "--heads", "4"], check=True, capture_output=True)
    return model


def test_real_dream_metadata_chats_with_transformers_prompt_ids():
    with tempfile.TemporaryDirectory() as tmp:
        s = Server("dream-real", "--max-tokens", "8", model_dir=real_like("dream-v0-instruct-7b", tmp))
        try:
            reference = json.load(open(os.path.join(REAL, "dream-v0-instruct-7b", "reference.json")))
            for case in reference["chat"]:
                if not case["add_generation_prompt"]:
                    continue
                r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=case["messages"], max_tokens=4)
                # The real template and tokenizer: the prompt transformers builds.
                assert r.usage.prompt_tokens == len(case["ids"]), case["messages"]
                assert r.choices[0].finish_reason in ("stop", "length")
            for tool in reference["tool_chat"]:
                r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=as_sent(tool["messages"]),
                                                     tools=tool["tools"], max_tokens=4)
                assert r.usage.prompt_tokens == len(tool["ids"]), "tools rendered by the template as in transformers"
        finally:
            s.close()


def test_real_phi2_metadata_completes_with_its_published_tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        s = Server("phi2-real", model_dir=real_like("phi-2", tmp))
        try:
            r = s.client.completions.create(model="gpt-3.5-turbo", prompt="Hello, world!", max_tokens=3,
                                            temperature=0)
            assert r.usage.prompt_tokens == 4  # [15496, 11, 995, 0], as transformers encodes it
            with pytest.raises(openai.BadRequestError):
                # Phi-2 ships no chat template: chat is a 400, as upstream.
                s.client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
        finally:
            s.close()


def test_real_tinyllama_metadata_chats_and_completes_as_its_published_tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        s = Server("tinyllama-real", model_dir=real_like("tinyllama-1.1b-chat-v1.0", tmp))
        try:
            reference = json.load(open(os.path.join(REAL, "tinyllama-1.1b-chat-v1.0", "reference.json")))
            for case in reference["chat"]:
                if not case["add_generation_prompt"]:
                    continue
                r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=case["messages"],
                                                     max_tokens=3, temperature=0)
                # TinyLlama's real Zephyr template through its published tokenizer.json.
                assert r.usage.prompt_tokens == len(case["ids"]), case["messages"]
            hello = next(c for c in reference["encode"] if c["text"] == "Hello, world!")
            r = s.client.completions.create(model="gpt-3.5-turbo", prompt="Hello, world!", max_tokens=3,
                                            temperature=0)
            # A plain prompt gets <s>, as transformers' tokenizer(text) and vLLM give it.
            assert r.usage.prompt_tokens == len(hello["ids_with_specials"]) == len(hello["ids"]) + 1
            # vLLM's repetition_penalty: accepted for an autoregressive model, checked.
            r = s.client.completions.create(model="gpt-3.5-turbo", prompt="Hello", max_tokens=3,
                                            extra_body={"repetition_penalty": 1.3})
            assert r.choices[0].finish_reason in ("stop", "length")
            with pytest.raises(openai.BadRequestError) as e:
                s.client.completions.create(model="gpt-3.5-turbo", prompt="Hello", max_tokens=3,
                                            extra_body={"repetition_penalty": 0})
            assert e.value.body["param"] == "repetition_penalty"
        finally:
            s.close()


def test_real_qwen2_5_metadata_chats_with_tools_and_its_sampling_defaults():
    with tempfile.TemporaryDirectory() as tmp:
        s = Server("qwen-real", model_dir=real_like("qwen2.5-0.5b-instruct", tmp))
        try:
            reference = json.load(open(os.path.join(REAL, "qwen2.5-0.5b-instruct", "reference.json")))
            for case in reference["chat"]:
                if not case["add_generation_prompt"]:
                    continue
                r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=case["messages"], max_tokens=3)
                # ChatML from the real template, ids from vocab.json + merges.txt.
                assert r.usage.prompt_tokens == len(case["ids"]), case["messages"]
            for tool in reference["tool_chat"]:
                r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=as_sent(tool["messages"]),
                                                     tools=tool["tools"], max_tokens=3)
                assert r.usage.prompt_tokens == len(tool["ids"]), "Qwen2.5's tool prompt, as transformers renders it"
            # generation_config.json's top_k (20) is a default for an autoregressive model;
            # the request's own -1 turns it off; both are accepted.
            for extra in ({}, {"top_k": -1, "repetition_penalty": 1.0}):
                r = s.client.completions.create(model="gpt-3.5-turbo", prompt="Hello", max_tokens=2, seed=1,
                                                extra_body=extra)
                assert r.choices[0].finish_reason in ("stop", "length")
        finally:
            s.close()


def test_vllm_flag_names():
    # A vLLM command line's names: the server starts and behaves as its flags say.
    s = Server("llama", "--max-num-seqs", "2", "--max-model-len", "64", "--dtype", "float",
               "--request-timeout", "30", "--request-timeout-streaming", "30",
               names=["--served-model-name", "served-by-vllm-name", "--api-key", KEY])
    try:
        assert [m.id for m in s.client.models.list().data] == ["served-by-vllm-name"]
        r = s.client.completions.create(model="served-by-vllm-name", prompt="Hello", max_tokens=4)
        assert r.choices[0].text is not None
        # --max-model-len 64 caps prompt + answer below the demo model's 512.
        with pytest.raises(openai.BadRequestError) as e:
            s.client.completions.create(model="served-by-vllm-name", prompt="Hello", max_tokens=80)
        assert e.value.status_code == 400
        req = urllib.request.Request(s.base + "/health", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req) as h:
            assert json.loads(h.read())["max_concurrent_requests"] == 2
        # vLLM's /models beside /v1/models.
        req = urllib.request.Request(s.base + "/models", headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req) as m:
            assert json.loads(m.read())["data"][0]["id"] == "served-by-vllm-name"
    finally:
        s.close()


def test_idempotency_key_replays(server):
    # A retry after a dropped connection: the SDK sends the same key and body again.
    key = {"Idempotency-Key": f"sdk-{server.base}-1"}
    args = dict(model="gpt-3.5-turbo", prompt="Hello", max_tokens=8, temperature=1.0, extra_headers=key)
    first = server.client.completions.with_raw_response.create(**args)
    again = server.client.completions.with_raw_response.create(**args)
    assert first.headers.get("idempotent-replayed") is None
    assert again.headers.get("idempotent-replayed") == "true"
    a, b = first.parse(), again.parse()
    assert (a.id, a.choices[0].text) == (b.id, b.choices[0].text)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        server.client.completions.create(**{**args, "prompt": "Bye"})
    assert e.value.status_code == 422


ADD_TOOL = {"type": "function", "function": {
    "name": "add", "description": "Add two integers.",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


def test_bundled_ar_model_calls_a_tool_and_answers_from_its_result():
    # The bundled model was trained (scripts/train/tasks.py) to call `add` when the tool
    # is offered and to answer from the tool's result; "add 316+8=" is a held-out prompt.
    s = Server("llama", "--max-tokens", "64", model_dir=BUNDLED_AR)
    try:
        chat = lambda messages, **kw: s.client.chat.completions.create(
            model="gpt-3.5-turbo", messages=messages, tools=[ADD_TOOL], temperature=0, **kw)
        question = [{"role": "user", "content": "add 316+8="}]
        r = chat(question)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [call] = choice.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name == "add"
        assert json.loads(call.function.arguments) == {"a": 316, "b": 8}

        # Streamed, the SDK's delta assembly gives the same call and no content.
        calls, content, finish = {}, "", None
        for chunk in chat(question, stream=True):
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = d.id or entry["id"]
                entry["name"] += (d.function.name or "") if d.function else ""
                entry["arguments"] += (d.function.arguments or "") if d.function else ""
            finish = c.finish_reason or finish
        assert content == "" and finish == "tool_calls"
        assert [(e["name"], json.loads(e["arguments"])) for e in calls.values()] == [("add", {"a": 316, "b": 8})]

        # The round trip: the call goes back in the history with the tool's answer.
        history = question + [choice.message.model_dump(exclude_none=True),
                              {"role": "tool", "tool_call_id": call.id, "content": "324"}]
        r = chat(history)
        assert r.choices[0].message.content == "324"
        assert r.choices[0].finish_reason == "stop"
        assert not r.choices[0].message.tool_calls

        # A named tool_choice is enforced (the answer starts as that call): finish is stop.
        r = chat(question, tool_choice={"type": "function", "function": {"name": "add"}})
        assert r.choices[0].finish_reason == "stop"
        assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"a": 316, "b": 8}
        r = chat(question, tool_choice="required")
        assert r.choices[0].message.tool_calls[0].function.name == "add"
        # tool_choice none: the answer is text, never read for calls.
        r = chat(question, tool_choice="none")
        assert r.choices[0].message.tool_calls is None
        assert "<tool_call>" in r.choices[0].message.content

        for bad, param in ((dict(tool_choice={"type": "function", "function": {"name": "sub"}}), "tool_choice"),
                           (dict(tool_choice="sometimes"), "tool_choice")):
            with pytest.raises(openai.BadRequestError) as e:
                chat(question, **bad)
            assert e.value.body["param"] == param
        with pytest.raises(openai.BadRequestError) as e:
            s.client.chat.completions.create(model="gpt-3.5-turbo", messages=question,
                                             tools=[{"type": "function", "function": {"name": "a b"}}])
        assert e.value.body["param"] == "tools[0].function.name"
        bad_history = question + [{"role": "assistant", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "add", "arguments": "{oops"}}]}]
        with pytest.raises(openai.BadRequestError) as e:
            chat(bad_history)
        assert e.value.body["param"] == "messages[1].tool_calls[0].function.arguments"
    finally:
        s.close()


def test_tools_on_a_model_without_a_tool_format_are_400():
    # The demo llama's template teaches no tool-call spelling: auto cannot be honoured.
    s = Server("llama")
    try:
        with pytest.raises(openai.BadRequestError) as e:
            s.client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}],
                                             tools=[ADD_TOOL], max_tokens=2)
        assert e.value.body["param"] == "tools"
        r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}],
                                             tools=[ADD_TOOL], tool_choice="none", max_tokens=2)
        assert r.choices[0].message.tool_calls is None
    finally:
        s.close()


def test_response_format_json_object_starts_an_object_and_is_checked():
    s = Server("llama", "--max-tokens", "8")
    try:
        q = [{"role": "user", "content": "hi"}]
        r = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=q, max_tokens=8,
                                             response_format={"type": "json_object"})
        text = r.choices[0].message.content
        assert text.startswith("{"), text
        try:
            valid = isinstance(json.loads(text), dict)
        except ValueError:
            valid = False
        counted = [l for l in s.metrics().splitlines() if l.startswith("dfastllm_response_format_invalid_total")]
        assert counted == [f"dfastllm_response_format_invalid_total {0 if valid else 1}"], counted
        chunks = s.client.chat.completions.create(model="gpt-3.5-turbo", messages=q, max_tokens=8, stream=True,
                                                  response_format={"type": "json_object"})
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == text, "the stream sends the opening brace too"
        with pytest.raises(openai.BadRequestError) as e:
            s.client.chat.completions.create(model="gpt-3.5-turbo", messages=q, max_tokens=2,
                                             response_format={"type": "json_schema", "json_schema": {"name": "x"}})
        assert e.value.body["param"] == "response_format"
    finally:
        s.close()
