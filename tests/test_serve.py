"""The API server end to end, with the official ``openai`` SDK as the client.

A tiny random DeepSeek-V3-shaped model and a freshly trained tokenizer (with the R1 think
tokens and DeepSeek's FIM tokens) are served on 127.0.0.1 by uvicorn in a background thread.
The text is random: these tests check the protocol (shapes, fields, usage, errors, streaming,
aborts), not the answers. The helpers here are reused by ``test_serve_fuzz.py``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
import uvicorn
from openai import OpenAI
from tokenizers import AddedToken

import nanoseek
from nanoseek.infer import LLMEngine
from nanoseek.serve.api import STATIC_DIR, ServeConfig, create_app
from nanoseek.serve.prompts import FIM_BEGIN, FIM_END, FIM_HOLE
from nanoseek.tokenizer import Tokenizer, train_tokenizer

MAX_MODEL_LEN = 192
NAME = "tiny-r1"
CORPUS = "\n\n".join(
    f"The quick brown fox {i} jumps over the lazy dog. Hello world, the answer is {i * 7}. "
    "Think step by step, then answer in json." for i in range(200))


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model + tokenizer (think tokens and FIM tokens included)."""
    root = tmp_path_factory.mktemp("serve_model")
    (root / "corpus.txt").write_text(CORPUS)
    tokenizer = train_tokenizer([root / "corpus.txt"], vocab_size=400)
    tokenizer.backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                          for t in (FIM_BEGIN, FIM_HOLE, FIM_END)])
    torch.manual_seed(0)
    model = nanoseek.build_model(nanoseek.get_preset("tiny").replace(
        vocab_size=tokenizer.vocab_size))
    out = root / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_engine(model_dir: Path, num_blocks: int = 96) -> tuple[LLMEngine, Tokenizer]:
    """A fresh engine (own model copy, so servers never share one) and its tokenizer."""
    tokenizer = Tokenizer.from_pretrained(model_dir)
    model = nanoseek.load_pretrained(model_dir)
    return LLMEngine(model, tokenizer, max_model_len=MAX_MODEL_LEN, num_blocks=num_blocks,
                     block_size=16), tokenizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(engine: Any, tokenizer: Tokenizer, **config: Any) -> Iterator[tuple[str, Any]]:
    """Run ``create_app`` on a free loopback port; yields (base URL, uvicorn server)."""
    config.setdefault("served_model_name", NAME)
    app = create_app(engine, tokenizer, ServeConfig(**config))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(),
                                           log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}", server
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "server did not stop"


def client(base: str, key: str = "x", retries: int = 0) -> OpenAI:
    return OpenAI(base_url=base + "/v1", api_key=key, max_retries=retries, timeout=60)


def raw(base: str, method: str, path: str, body: Any = None, headers: dict | None = None,
        timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with the standard library: (status, headers, body)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={"content-type": "application/json",
                                                   **(headers or {})})
    response = conn.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    conn.close()
    return out


def counts(server: Any) -> dict[str, int]:
    return dict(server.config.app.state.server.request_counts)


@pytest.fixture(scope="module")
def live(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """The shared server: (base URL, uvicorn server, engine, ledger path)."""
    engine, tokenizer = make_engine(model_dir, num_blocks=256)
    ledger = tmp_path_factory.mktemp("ledger") / "usage.sqlite"
    # keep-alives every 10 ms: the SDK must skip them in every streamed test
    with serving(engine, tokenizer, ledger_path=ledger, keepalive_s=0.01) as (base, server):
        yield base, server, engine, ledger


def chat(c: OpenAI, text: str = "hi", **kw: Any) -> Any:
    kw.setdefault("model", NAME)
    kw.setdefault("max_tokens", 8)
    return c.chat.completions.create(messages=[{"role": "user", "content": text}], **kw)


# ------------------------------------------------------------------------------ chat
def test_chat_plain_has_deepseek_fields(live: tuple) -> None:
    r = chat(client(live[0]), temperature=0)
    assert r.object == "chat.completion" and r.model == NAME and r.system_fingerprint
    choice = r.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.model_extra["reasoning_content"], str)  # thinking mode
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens and u.completion_tokens >= 1
    extra = u.model_extra
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == u.prompt_tokens
    assert u.prompt_tokens_details.cached_tokens == extra["prompt_cache_hit_tokens"]
    assert u.completion_tokens_details.reasoning_tokens == u.completion_tokens  # no </think>


def test_stream_matches_non_stream_and_chunk_order(live: tuple) -> None:
    c = client(live[0])
    whole = chat(c, "tell me", temperature=0, max_tokens=12)
    chunks = list(chat(c, "tell me", temperature=0, max_tokens=12, stream=True,
                       stream_options={"include_usage": True}))
    first, finish, usage = chunks[0], chunks[-2], chunks[-1]
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.model_extra["reasoning_content"] == ""
    assert finish.choices[0].finish_reason == whole.choices[0].finish_reason
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    assert len({ch.id for ch in chunks}) == 1 and len({ch.created for ch in chunks}) == 1
    reasoning = "".join(ch.choices[0].delta.model_extra.get("reasoning_content") or ""
                        for ch in chunks[:-1])
    content = "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1])
    assert reasoning == whole.choices[0].message.model_extra["reasoning_content"]
    assert content == whole.choices[0].message.content


def test_aliases_and_thinking_switch(live: tuple) -> None:
    c = client(live[0])
    plain = chat(c, model="deepseek-chat")
    assert "reasoning_content" not in plain.choices[0].message.model_extra
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0
    assert plain.model == "deepseek-chat"
    thinking = chat(c, model="deepseek-reasoner")
    assert isinstance(thinking.choices[0].message.model_extra["reasoning_content"], str)
    off = chat(c, model="deepseek-reasoner", extra_body={"thinking": {"type": "disabled"}})
    assert "reasoning_content" not in off.choices[0].message.model_extra


def test_reasoner_alias_behaves_as_deepseeks_reasoner(live: tuple) -> None:
    """``deepseek-reasoner`` ignores temperature, top_p and the penalties, refuses logprobs
    and /completions; the served name keeps every knob."""
    c = client(live[0])
    texts = {chat(c, model="deepseek-reasoner", seed=5, max_tokens=12, temperature=t, top_p=p,
                  presence_penalty=pp).choices[0].message.model_extra["reasoning_content"]
             for t, p, pp in ((0.0, 1.0, 0.0), (2.0, 0.1, 1.5))}
    assert len(texts) == 1
    named = {chat(c, seed=5, max_tokens=12, temperature=t).choices[0].message.model_extra[
        "reasoning_content"] for t in (0.0, 2.0)}
    assert len(named) == 2  # greedy vs T = 2 on a random model
    for kw in ({"logprobs": True}, {"logprobs": True, "top_logprobs": 2}):
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            chat(c, model="deepseek-reasoner", **kw)
    with pytest.raises(openai.BadRequestError, match="completions"):
        c.completions.create(model="deepseek-reasoner", prompt="x", max_tokens=2)


def test_multi_turn_content_parts_and_path_prefixes(live: tuple) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "assistant", "content": "Hi!", "reasoning_content": "dropped"},
                {"role": "developer", "content": "Really brief."},
                {"role": "user", "content": "Again?"}]
    for base_url in (live[0], live[0] + "/v1", live[0] + "/beta"):
        r = OpenAI(base_url=base_url, api_key="x", max_retries=0).chat.completions.create(
            model=NAME, messages=messages, max_tokens=2)
        assert r.usage.prompt_tokens > 20


def test_prefix_completion_continues_as_answer(live: tuple) -> None:
    r = client(live[0]).chat.completions.create(
        model=NAME, max_tokens=6, messages=[
            {"role": "user", "content": "write code"},
            {"role": "assistant", "content": "```python\n", "prefix": True}])
    message = r.choices[0].message
    assert message.model_extra["reasoning_content"] == ""  # the thought was closed for it
    assert r.usage.completion_tokens_details.reasoning_tokens == 0


def test_repeated_long_prompt_hits_the_prefix_cache(live: tuple) -> None:
    c = client(live[0])
    text = "cache me please " * 4 + str(time.time())
    first, second = (chat(c, text, max_tokens=6, temperature=0) for _ in range(2))
    hit = second.usage.model_extra["prompt_cache_hit_tokens"]
    assert first.usage.model_extra["prompt_cache_hit_tokens"] < hit
    assert hit > 0 and hit % 16 == 0 and hit < second.usage.prompt_tokens
    assert hit + second.usage.model_extra["prompt_cache_miss_tokens"] == first.usage.prompt_tokens
    answer = [r.choices[0].message.model_extra["reasoning_content"] for r in (first, second)]
    assert answer[0] == answer[1]  # a cache hit answers exactly as a miss (greedy)


def test_n_choices_plain_and_streamed(live: tuple) -> None:
    c = client(live[0])
    r = chat(c, n=3, max_tokens=4, seed=7)
    assert sorted(ch.index for ch in r.choices) == [0, 1, 2]
    assert 3 <= r.usage.completion_tokens <= 12
    finishes = [ch.choices[0].index for ch in chat(c, n=2, max_tokens=3, stream=True)
                if ch.choices and ch.choices[0].finish_reason]
    assert sorted(finishes) == [0, 1]


def test_stop_sequence_cuts_the_answer(live: tuple) -> None:
    c = client(live[0])
    text = chat(c, "go", model="deepseek-chat", temperature=0, max_tokens=16)
    content = text.choices[0].message.content
    assert len(content) >= 4
    stop = content[2:4]
    cut = chat(c, "go", model="deepseek-chat", temperature=0, max_tokens=16, stop=[stop])
    assert cut.choices[0].message.content == content[:content.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_chat_logprobs(live: tuple) -> None:
    r = chat(client(live[0]), logprobs=True, top_logprobs=2, max_tokens=5)
    items = r.choices[0].logprobs.content
    assert len(items) == r.usage.completion_tokens
    for item in items:
        assert item.logprob <= 0 and len(item.top_logprobs) == 2 and isinstance(item.bytes, list)
        assert item.top_logprobs[0].logprob >= item.top_logprobs[1].logprob


# ------------------------------------------------------------------------------ completions
def test_completions_echo_fim_logprobs_and_stream(live: tuple) -> None:
    c = client(live[0])
    r = c.completions.create(model=NAME, prompt="The quick", max_tokens=4, echo=True)
    assert r.object == "text_completion" and r.choices[0].text.startswith("The quick")
    r = c.completions.create(model=NAME, prompt=["a", "b"], n=2, max_tokens=3, logprobs=1)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    assert len(r.choices[0].logprobs.tokens) == len(r.choices[0].logprobs.token_logprobs)
    fim = OpenAI(base_url=live[0] + "/beta", api_key="x", max_retries=0).completions.create(
        model="deepseek-chat", prompt="def f(x):", suffix="    return y", max_tokens=3)
    assert fim.usage.prompt_tokens > 3
    parts = list(c.completions.create(model=NAME, prompt="Hello", max_tokens=3, stream=True,
                                      stream_options={"include_usage": True}))
    assert 1 <= parts[-1].usage.completion_tokens <= 3 and parts[-2].choices[0].finish_reason


def test_models_health_and_index(live: tuple) -> None:
    c = client(live[0])
    assert [m.id for m in c.models.list()] == [NAME, "deepseek-chat", "deepseek-reasoner"]
    assert c.models.retrieve("deepseek-chat").owned_by == "nanoseek"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-9")
    status, _, body = raw(live[0], "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, headers, body = raw(live[0], "GET", "/")
    if (STATIC_DIR / "index.html").is_file():
        assert status == 200 and headers["content-type"].startswith("text/html")
    else:
        assert status == 404 and "web UI" in json.loads(body)["error"]["message"]


# ------------------------------------------------------------------------------ errors
def test_error_classes_and_no_retries_on_4xx(live: tuple) -> None:
    base, server = live[0], live[1]
    c = client(base, retries=2)  # the SDK would retry 429/5xx, never these
    before = counts(server).get("/v1/chat/completions", 0)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        chat(c, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="does not exist"):
        chat(c, model="gpt-9")
    with pytest.raises(openai.BadRequestError, match=rf"maximum context length is "
                       rf"{MAX_MODEL_LEN}"):
        chat(c, "word " * 400)
    with pytest.raises(openai.BadRequestError, match="stream_options"):
        chat(c, stream_options={"include_usage": True})
    with pytest.raises(openai.BadRequestError, match="json"):
        chat(c, response_format={"type": "json_object"})
    with pytest.raises(openai.UnprocessableEntityError):
        chat(c, n=0)
    assert counts(server)["/v1/chat/completions"] - before == 6  # one attempt each
    status, _, body = raw(base, "POST", "/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"
    assert chat(c).choices  # still serving


# ------------------------------------------------------------------------------ ledger
def test_ledger_and_usage_command(live: tuple, capsys: pytest.CaptureFixture) -> None:
    from nanoseek.serve.ledger import Ledger
    from nanoseek.serve.usage import main as usage_main

    c = client(live[0])
    r = chat(c, model="deepseek-reasoner", max_tokens=3)
    ledger = Ledger(live[3])
    try:
        row = next(x for x in ledger.records() if x["request_id"] == r.id)
        assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        ledger.close()
    assert row["key_id"] == "anonymous"
    assert row["completion_tokens"] == r.usage.completion_tokens
    expected = (row["cache_hit_tokens"] * 0.14 + row["cache_miss_tokens"] * 0.55
                + row["completion_tokens"] * 2.19) / 1e6  # R1 launch prices
    assert row["cost_usd"] == pytest.approx(expected)
    assert usage_main(["--ledger", str(live[3]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["requests"] >= 1 and "o1" in summary["at_list_prices"]
