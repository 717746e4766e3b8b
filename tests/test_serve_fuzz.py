"""Fuzz the API with malformed and extreme requests: each gets a 4xx JSON error (or, when the
mutation happens to be valid, a normal answer), never a 500, and the server stays healthy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import NAME, chat, client, make_engine, model_dir, raw, serving

__all__ = ["model_dir"]  # the session fixture, re-exported for pytest

EXTREMES = [None, True, -1, 0, 1.5, 2**31, 2**64, -(2**64), 10**400 // 10**390, 1e308, -1e308,
            "", "NaN", "x" * 5000, [], {}, [[]], {"type": "nope"}, ["", ""], "\u0000\ud800"]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=10)
CHAT_FIELDS = ["model", "messages", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "presence_penalty", "frequency_penalty", "stop", "seed", "n", "logprobs",
               "top_logprobs", "response_format", "stream", "stream_options", "thinking",
               "tools", "user"]
COMPLETION_FIELDS = ["model", "prompt", "suffix", "echo", "logprobs", "max_tokens", "stop",
                     "n", "best_of", "stream", "temperature", "seed"]
MESSAGE = st.fixed_dictionaries({
    "role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "bot", 3]),
    "content": st.one_of(st.text(max_size=40), st.none(), JSON,
                         st.just([{"type": "text", "text": "hi"}]),
                         st.just([{"type": "image_url", "image_url": {"url": "x"}}])),
}, optional={"prefix": st.booleans(), "reasoning_content": st.text(max_size=10)})


def mutated(base: dict[str, Any], fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """``base`` with fields replaced by odd values, deleted, or messages scrambled."""
    value = st.one_of(st.sampled_from(EXTREMES), JSON)
    replace = st.dictionaries(st.sampled_from(fields), value, min_size=1, max_size=3).map(
        lambda changes: base | changes)
    drop = st.sampled_from(fields).map(lambda f: {k: v for k, v in base.items() if k != f})
    messages = st.lists(MESSAGE, max_size=4).map(lambda m: base | {"messages": m})
    return st.one_of(replace, drop, messages) if "messages" in base else st.one_of(replace, drop)


def bounded(body: Any) -> Any:
    """Keep valid requests cheap: at most 4 new tokens each."""
    if isinstance(body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            v = body.get(field)
            if isinstance(v, int) and not isinstance(v, bool) and 4 < v < 2**31:
                body[field] = 4
    return body


CHAT_BASE = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
COMPLETION_BASE = {"model": NAME, "prompt": "hi", "max_tokens": 1}
BODIES = st.one_of(
    mutated(CHAT_BASE, CHAT_FIELDS).map(lambda b: ("/v1/chat/completions", bounded(b))),
    mutated(COMPLETION_BASE, COMPLETION_FIELDS).map(lambda b: ("/completions", bounded(b))),
    st.tuples(st.sampled_from(["/chat/completions", "/beta/completions"]), JSON),
    st.tuples(st.just("/chat/completions"),
              st.binary(max_size=64) | st.integers(1, 3000).map(lambda k: b"[" * k)),
)


@pytest.fixture(scope="module")
def fuzz_server(model_dir: Path) -> Iterator[tuple[str, Any, Any]]:
    engine, tokenizer = make_engine(model_dir)
    with serving(engine, tokenizer) as (base, server):
        yield base, server, engine


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(BODIES)
def test_malformed_requests_get_4xx_json(fuzz_server: tuple, case: tuple[str, Any]) -> None:
    path, body = case
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, payload = raw(fuzz_server[0], "POST", path, data)
    if status == 200:
        return  # the mutation was a valid request, and it was served
    assert 400 <= status < 500, (status, payload[:300])
    error = json.loads(payload)["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and "code" in error and "param" in error


def test_server_healthy_after_fuzzing(fuzz_server: tuple) -> None:
    base, _, engine = fuzz_server
    status, _, body = raw(base, "GET", "/health")
    assert status == 200 and json.loads(body)["engine_failures"] == 0
    assert chat(client(base), max_tokens=2).choices
    assert not engine.has_unfinished()
