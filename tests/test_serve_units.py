"""Server pieces without a server: the reasoning split, request validation, limits, ledger,
prices, the usage command, token bytes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoseek.infer.engine import CompletionOutput, RequestOutput
from nanoseek.infer.sampling import SamplingParams
from nanoseek.serve.errors import APIError
from nanoseek.serve.ledger import (
    ANONYMOUS,
    Ledger,
    Prices,
    UsageRecord,
    default_prices,
    key_id,
    parse_price,
)
from nanoseek.serve.limits import Budget, KeyChecker, RateLimiter
from nanoseek.serve.prompts import Job, Plan
from nanoseek.serve.reasoning import ReasoningParser, count_reasoning_tokens
from nanoseek.serve.responses import Collector, token_text
from nanoseek.serve.schemas import ChatCompletionRequest, CompletionRequest, Head, parse_body
from nanoseek.serve.usage import main as usage_main
from nanoseek.serve.usage import parse_since


# ------------------------------------------------------------------------------ reasoning
def split(text: str, in_reasoning: bool = True, cuts: list[int] = ()) -> tuple[str, str]:
    parser, reasoning, content, start = ReasoningParser(in_reasoning), "", "", 0
    for cut in [*sorted(cuts), len(text)]:
        r, c = parser.feed(text[start:cut])
        reasoning, content, start = reasoning + r, content + c, max(start, cut)
    r, c = parser.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize(("text", "expected"), [
    ("I think.\n</think>\n\nThe answer.", ("I think.", "The answer.")),
    ("<think>\nre-opened\n</think>\n\nok", ("re-opened", "ok")),
    ("never closed\n", ("never closed\n", "")),
    ("</think>answer only", ("", "answer only")),
    ("a </thin b", ("a </thin b", "")),
    ("x</think>\n\n\n", ("x", "")),
    ("\n\nthought</think>ok", ("thought", "ok")),
    ("\n<think>\n\n", ("", "")),
    ("<think><think>x", ("<think>x", "")),
])
def test_reasoning_split(text: str, expected: tuple[str, str]) -> None:
    assert split(text) == expected


def test_reasoning_parser_outside_a_thought_passes_text_through() -> None:
    assert split("\ncode</think>more", in_reasoning=False) == ("", "\ncode</think>more")


@pytest.mark.parametrize(("pieces", "cuts"), [(["\n", "<think>"], [1]),
                                              (["<think>", "\n", "\n"], [8])])
def test_reasoning_split_chunking_regressions(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    assert split(text, cuts=cuts) == split(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "\n", "<", "/", "think", ">", "</think>", "<think>",
                                 "é", " ", "<th", "ink>", "</"]), max_size=20),
       st.lists(st.integers(0, 60), max_size=6))
def test_reasoning_split_does_not_depend_on_chunking(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    assert split(text, cuts=[c for c in cuts if c <= len(text)]) == split(text)


def test_count_reasoning_tokens() -> None:
    assert count_reasoning_tokens([5, 6, 9, 7], think_end_id=9, starts_in_reasoning=True) == 3
    assert count_reasoning_tokens([5, 6], think_end_id=9, starts_in_reasoning=True) == 2
    assert count_reasoning_tokens([5, 9], think_end_id=9, starts_in_reasoning=False) == 0


# ------------------------------------------------------------------------------ validation
def status_of(model: type, body: object | bytes) -> int:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        parse_body(model, raw)
    except APIError as error:
        assert error.body()["error"]["message"]
        return error.status
    return 200


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "m", "messages": MSG}, 200),
    ({"model": "m", "messages": MSG, "unknown_field": {"x": 1}}, 200),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]},
     200),
    (b"{", 400), (b"[]", 400), (b"\xff\xfe", 400), ({"messages": MSG}, 400),
    ({"model": "m", "messages": []}, 400), ({"model": "m", "messages": "hi"}, 400),
    ({"model": "m", "messages": MSG, "temperature": 2.5}, 422),
    ({"model": "m", "messages": MSG, "temperature": "1"}, 422),
    ({"model": "m", "messages": MSG, "top_p": -0.1}, 422),
    ({"model": "m", "messages": MSG, "max_tokens": 0}, 422),
    ({"model": "m", "messages": MSG, "max_tokens": 2**40}, 422),
    ({"model": "m", "messages": MSG, "presence_penalty": 3}, 422),
    ({"model": "m", "messages": MSG, "n": 99}, 422),
    ({"model": "m", "messages": MSG, "stop": [""]}, 200),  # caught when building params
    ({"model": "m", "messages": MSG, "stop": ["x"] * 17}, 422),
    ({"model": "m", "messages": MSG, "seed": 2**70}, 422),
    ({"model": "m", "messages": MSG, "top_logprobs": 3}, 400),
    ({"model": "m", "messages": MSG, "logprobs": True, "top_logprobs": 21}, 422),
    ({"model": "m", "messages": MSG, "stream_options": {"include_usage": True}}, 400),
    ({"model": "m", "messages": MSG, "tools": [{"type": "function"}]}, 400),
    ({"model": "m", "messages": MSG, "response_format": {"type": "json_schema"}}, 422),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, 400),
    ({"model": "m", "messages": [{"role": "assistant", "content": "x", "prefix": True}, *MSG]},
     400),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, 422),
])
def test_chat_request_validation(body: object, status: int) -> None:
    assert status_of(ChatCompletionRequest, body) == status


@pytest.mark.parametrize(("body", "status"), [
    ({"model": "m", "prompt": "x"}, 200), ({"model": "m", "prompt": [1, 2]}, 200),
    ({"model": "m", "prompt": [[1], [2]]}, 200), ({"model": "m", "prompt": []}, 422),
    ({"model": "m", "prompt": "x", "echo": True, "logprobs": 1}, 422),
    ({"model": "m", "prompt": ["a"] * 9, "n": 2}, 422),
    ({"model": "m", "prompt": "x", "best_of": 3}, 422),
])
def test_completion_request_validation(body: object, status: int) -> None:
    assert status_of(CompletionRequest, body) == status


def test_completion_without_fim_tokens_is_refused() -> None:
    from nanoseek.serve.prompts import ModelInfo, completion_plan
    from nanoseek.serve.schemas import Head

    class Plain:  # a tokenizer without FIM tokens
        vocab_size, bos_id = 10, 0

        def token_to_id(self, token: str) -> None:
            return None

    info = ModelInfo("m", Plain(), 64, False)  # type: ignore[arg-type]
    request = parse_body(CompletionRequest, b'{"model": "m", "prompt": "a", "suffix": "b"}')
    with pytest.raises(APIError, match="fill-in-the-middle") as e:
        completion_plan(request, info, Head("id", "text_completion", 0, "m", "fp"))
    assert e.value.status == 400 and e.value.param == "suffix"


# ------------------------------------------------------------------------------ limits
def test_keys_and_rate_limit() -> None:
    keys = KeyChecker(["sk-a"])
    assert keys.identify("Bearer sk-a") == key_id("sk-a") != ANONYMOUS
    for header in (None, "Bearer sk-b", "Basic sk-a", "Bearer "):
        with pytest.raises(APIError) as e:
            keys.identify(header)
        assert e.value.status == 401
    assert KeyChecker([]).identify(None) == ANONYMOUS
    limiter = RateLimiter(per_minute=2)
    limiter.acquire("k", now=0.0)
    limiter.acquire("k", now=0.0)
    with pytest.raises(APIError) as e:
        limiter.acquire("k", now=1.0)
    assert e.value.status == 429 and e.value.headers["retry-after"] == "29"
    limiter.acquire("other", now=1.0)  # buckets are per key
    limiter.acquire("k", now=31.0)  # refilled at 2 per minute
    with pytest.raises(ValueError, match="rate-limit"):
        RateLimiter(0)


# ------------------------------------------------------------------------------ ledger
def record(key: str = "k1", hit: int = 100, prompt: int = 300, out: int = 50) -> UsageRecord:
    return UsageRecord("r", key, "deepseek-reasoner", "/chat/completions", prompt, hit, out, 20,
                       default_prices()["deepseek-reasoner"])


def test_ledger_is_durable_and_sums(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.record(record())
    ledger.record(record(key="k2"))
    ledger.record(record())
    assert ledger._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ledger.close()
    one = (100 * 0.14 + 200 * 0.55 + 50 * 2.19) / 1e6
    assert record().cost_usd == pytest.approx(one)
    with sqlite3.connect(path) as db:  # written: visible to a fresh connection
        assert db.execute("SELECT COUNT(*) FROM usage").fetchone()[0] == 3
    again = Ledger(path)
    assert again.spent("k1") == pytest.approx(2 * one) and again.spent("nobody") == 0
    rows = again.summary()
    assert [r["key_id"] for r in rows] == ["k1", "k2"] and rows[0]["requests"] == 2
    assert rows[0]["cache_miss_tokens"] == 400
    budget = Budget(3 * one, again)
    budget.check("k1")
    again.record(record())
    with pytest.raises(APIError) as e:
        budget.check("k1")
    assert e.value.status == 402
    again.close()


def test_prices() -> None:
    assert default_prices()["deepseek-chat"] == Prices(0.07, 0.27, 1.10)
    assert parse_price("mine=0.1,0.2,0.3") == ("mine", Prices(0.1, 0.2, 0.3))
    assert parse_price("x=deepseek-r1")[1] == Prices(0.14, 0.55, 2.19)
    for bad in ("nope", "x=1,2", "x=a,b,c", "x=-1,0,0", "=1,2,3", "x=nan,1,1"):
        with pytest.raises(ValueError, match="--price"):
            parse_price(bad)


def test_usage_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(path)
    ledger.record(record(key=key_id("sk-a")))
    ledger.record(record(key="k2", hit=0))
    ledger.close()
    assert usage_main(["--ledger", str(path), "--key", "sk-a", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["totals"]["requests"] == 1 and out["cache_hit_rate"] == pytest.approx(1 / 3)
    assert out["at_list_prices"]["deepseek-r1"]["cost_usd"] == pytest.approx(
        out["totals"]["cost_usd"])  # billed at R1 prices
    assert usage_main(["--ledger", str(path)]) == 0
    text = capsys.readouterr().out
    assert "| total |" in text and "gpt-4o" in text
    assert usage_main(["--ledger", str(tmp_path / "missing.sqlite")]) == 2
    assert usage_main(["--ledger", str(path), "--since", "yesterday-ish"]) == 2
    assert parse_since("2d", now=10 * 86400) == 8 * 86400


def test_token_bytes_of_byte_level_pieces() -> None:
    from nanoseek.serve.responses import token_bytes, token_text

    class Vocab:
        pieces: ClassVar = {0: "Ġhello", 1: "Ã©", 2: "<｜User｜>", 3: "Ã"}

        def id_to_token(self, i: int) -> str:
            return self.pieces[i]

    vocab = Vocab()
    assert token_bytes(vocab, 0) == b" hello"  # type: ignore[arg-type]
    assert token_bytes(vocab, 1) == "é".encode()  # type: ignore[arg-type]
    assert token_bytes(vocab, 2) == "<｜User｜>".encode()  # type: ignore[arg-type]
    assert token_text(vocab, 3) == "bytes:\\xc3"  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ collector
def _completion_plan(n: int, logprobs: int | None = None) -> Plan:
    params = SamplingParams(n=n, max_tokens=8, logprobs=logprobs)
    return Plan("completion", Head("cmpl-1", "text_completion", 0, "m", "fp"),
                [Job("r0", [1, 2], params)], stream=True, logprobs=logprobs)


def _step(outputs: list[CompletionOutput], done: bool = False) -> RequestOutput:
    return RequestOutput("r0", None, [1, 2], outputs, done)


def test_streamed_choice_finishes_once_though_the_engine_repeats_it(arithmetic_tokenizer):
    """With n > 1 the engine reports a finished sample again on every later step."""
    collector = Collector(_completion_plan(2), arithmetic_tokenizer)
    ids = arithmetic_tokenizer.encode("12+34")
    done = CompletionOutput(0, "1", ids[:1], "stop", delta_text="1", delta_token_ids=ids[:1])
    steps = [
        [done, CompletionOutput(1, "1", ids[:1], delta_text="1", delta_token_ids=ids[:1])],
        [CompletionOutput(0, "1", ids[:1], "stop"),  # again, nothing new
         CompletionOutput(1, "12", ids[:2], delta_text="2", delta_token_ids=ids[1:2])],
        [CompletionOutput(0, "1", ids[:1], "stop"),
         CompletionOutput(1, "12", ids[:2], "length")],
    ]
    finishes = []
    for i, outputs in enumerate(steps):
        for delta in collector.add(_step(outputs, i == len(steps) - 1)):
            finishes += [(c["choices"][0]["index"], c["choices"][0]["finish_reason"])
                         for c in collector.chunks(delta) if c["choices"][0]["finish_reason"]]
    assert finishes == [(0, "stop"), (1, "length")]


def test_streamed_text_offsets_count_from_the_choices_first_token(arithmetic_tokenizer):
    tok = arithmetic_tokenizer
    ids = tok.encode("12+34=46")
    collector = Collector(_completion_plan(1, logprobs=0), tok)
    offsets, seen = [], 0
    for k in range(1, len(ids) + 1):
        lp = [{t: -0.5} for t in ids[:k]]
        out = CompletionOutput(0, tok.decode(ids[:k]), ids[:k], logprobs=lp,
                               delta_text=tok.decode(ids[:k])[seen:], delta_token_ids=ids[k - 1:k])
        seen = len(out.text)
        for delta in collector.add(_step([out])):
            offsets += [o for c in collector.chunks(delta)
                        for o in c["choices"][0]["logprobs"]["text_offset"]]
    texts = [token_text(tok, t) for t in ids]
    assert offsets == [sum(len(t) for t in texts[:i]) for i in range(len(ids))]
    assert collector.response()["choices"][0]["logprobs"]["text_offset"] == offsets
