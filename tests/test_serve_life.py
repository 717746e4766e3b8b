"""The server's life: keys, rate limits, budgets, overload, engine faults, keep-alives, client
disconnects, graceful shutdown, and the ``nanoseek serve`` command. Each test runs its own
server on its own engine (helpers from ``test_serve``)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from test_serve import NAME, chat, client, counts, make_engine, model_dir, raw, serving

from nanoseek.infer import LLMEngine

__all__ = ["model_dir"]  # the session fixture, re-exported for pytest


def test_auth_rate_limit_budget_and_overload(model_dir: Path, tmp_path: Path) -> None:
    engine, tokenizer = make_engine(model_dir)
    with serving(engine, tokenizer, api_keys=["sk-good"], rate_limit=2,
                 ledger_path=tmp_path / "l.sqlite", budget_usd=1e-9) as (base, server):
        with pytest.raises(openai.AuthenticationError):
            chat(client(base, "sk-bad", retries=2))
        assert counts(server)["/v1/chat/completions"] == 1
        good = client(base, "sk-good")
        assert chat(good, max_tokens=2).choices  # spends more than the budget
        with pytest.raises(openai.APIStatusError) as e:
            chat(client(base, "sk-good", retries=2))
        assert e.value.status_code == 402 and counts(server)["/v1/chat/completions"] == 3
        status, _, body = raw(base, "GET", "/user/balance",
                              headers={"authorization": "Bearer sk-good"})
        assert status == 200 and json.loads(body)["is_available"] is False
        with pytest.raises(openai.RateLimitError) as e:
            chat(good)
        assert int(e.value.response.headers["retry-after"]) >= 1
    with serving(engine, tokenizer, max_pending=0) as (base, server):
        with pytest.raises(openai.InternalServerError) as e:
            chat(client(base, retries=2))
        assert e.value.status_code == 503 and counts(server)["/v1/chat/completions"] == 1


class _Wrapped:
    """An engine wrapper: everything delegated to the real engine."""

    def __init__(self, engine: LLMEngine) -> None:
        self.inner = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _FailingEngine(_Wrapped):
    """The first ``step`` after each ``add_request`` raises (like a device fault)."""

    fail_next = False

    def add_request(self, *args: Any) -> None:
        self.inner.add_request(*args)
        self.fail_next = True

    def step(self) -> list:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated GPU fault")
        return self.inner.step()


class _RefusesSecond(_Wrapped):
    """``add_request`` fails on every second call (a fault while a request's jobs go in);
    steps take 0.05 s, so 100 tokens would take 5 s."""

    calls = 0

    def add_request(self, *args: Any) -> None:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("simulated fault at submit")
        self.inner.add_request(*args)

    def step(self) -> list:
        time.sleep(0.05)
        return self.inner.step()


def test_a_fault_between_a_requests_jobs_aborts_those_already_in(model_dir: Path) -> None:
    engine, tokenizer = make_engine(model_dir)
    with serving(_RefusesSecond(engine), tokenizer) as (base, server):
        with pytest.raises(openai.InternalServerError) as e:
            client(base).completions.create(model=NAME, prompt=["a", "b"], max_tokens=100)
        assert e.value.status_code == 503 and "simulated fault" in str(e.value)
        worker, deadline = server.config.app.state.server.worker, time.monotonic() + 2
        while worker.num_inflight or engine.has_unfinished():  # the first job was aborted
            assert time.monotonic() < deadline, "the job already submitted kept running"
            time.sleep(0.02)


def test_engine_failure_is_reported_not_fatal(model_dir: Path) -> None:
    engine, tokenizer = make_engine(model_dir)
    with serving(_FailingEngine(engine), tokenizer) as (base, _):
        c = client(base)
        with pytest.raises(openai.APIError, match="simulated GPU fault"):
            list(chat(c, stream=True))
        with pytest.raises(openai.InternalServerError):
            chat(c)
        status, _, body = raw(base, "GET", "/health")
        assert status == 200 and json.loads(body)["engine_failures"] >= 2


# ------------------------------------------------------------------------------ streaming life
MESSAGES = [{"role": "user", "content": "long " * 40}]


class _SlowEngine(_Wrapped):
    def step(self) -> list:
        time.sleep(0.05)
        return self.inner.step()


def test_keepalive_then_disconnect_aborts_and_frees_blocks(model_dir: Path) -> None:
    engine, tokenizer = make_engine(model_dir)
    free_before = engine.blocks.num_free_blocks
    with serving(_SlowEngine(engine), tokenizer, keepalive_s=0.01) as (base, server):
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/chat/completions", body=json.dumps(
            {"model": NAME, "stream": True, "max_tokens": 150, "messages": MESSAGES}),
            headers={"content-type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type").startswith("text/event-stream")
        lines = []
        while not any(line.startswith(b"data: ") for line in lines):
            lines.append(response.readline())
        assert b": keep-alive\n" in lines  # sent while the prefill step was running
        worker = server.config.app.state.server.worker
        assert worker.num_inflight == 1
        response.close()  # the client goes away mid-stream
        conn.close()
        deadline = time.monotonic() + 10
        while worker.num_inflight or engine.has_unfinished():
            assert time.monotonic() < deadline, "the request was not aborted"
            time.sleep(0.02)
        assert engine.blocks.num_free_blocks == free_before


@pytest.mark.parametrize("poll_s", [0.02, 0.3])  # slower and faster than a 0.05 s step
def test_non_stream_disconnect_aborts(model_dir: Path, poll_s: float) -> None:
    """Also when the engine answers faster than the poll: the check must not wait for a
    silent spell (it once did, and a fast request ran to the end for nobody)."""
    engine, tokenizer = make_engine(model_dir)
    with serving(_SlowEngine(engine), tokenizer, disconnect_poll_s=poll_s) as (base, server):
        host, port = base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)))
        body = json.dumps({"model": NAME, "max_tokens": 150, "messages": MESSAGES}).encode()
        sock.sendall(b"POST /chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
                     b"application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        worker = server.config.app.state.server.worker
        deadline = time.monotonic() + 10
        while worker.steps < 5:  # decoding: outputs come every 0.05 s from now on
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sock.close()
        steps_at_close = worker.steps
        while worker.num_inflight or engine.has_unfinished():
            assert time.monotonic() < deadline, "the request was not aborted"
            time.sleep(0.02)
        # a check every poll_s stops it within ~poll_s / 0.05 steps (150 tokens: 145 more)
        assert worker.steps - steps_at_close <= poll_s / 0.05 + 4


def test_graceful_shutdown_finishes_inflight(model_dir: Path) -> None:
    engine, tokenizer = make_engine(model_dir)
    result: dict[str, Any] = {}
    with serving(_SlowEngine(engine), tokenizer) as (base, server):
        def call() -> None:
            result["r"] = chat(client(base), max_tokens=10, temperature=0)

        thread = threading.Thread(target=call)
        thread.start()
        worker = server.config.app.state.server.worker
        deadline = time.monotonic() + 10
        while not worker.num_inflight:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.should_exit = True  # shutdown starts while the request runs
        thread.join(20)
    assert result["r"].choices[0].finish_reason in ("stop", "length")
    assert result["r"].usage.completion_tokens >= 1
    assert not engine.has_unfinished()


def test_serve_command_rejects_a_bad_model_dir(tmp_path: Path) -> None:
    from nanoseek.serve.main import main

    assert main(["--model", str(tmp_path / "missing"), "--no-ledger"]) == 2


def test_client_gone_during_the_ledger_write_is_billed_once(model_dir: Path,
                                                             tmp_path: Path) -> None:
    """The stream's ledger write (an fsynced insert in a thread) is cancelled with the client,
    but its thread still commits: the request must not be billed again for the abort."""
    from nanoseek.serve.ledger import Ledger

    engine, tokenizer = make_engine(model_dir)
    with serving(engine, tokenizer, ledger_path=tmp_path / "l.sqlite") as (base, server):
        ledger = server.config.app.state.server.ledger
        write = ledger.record

        def slow_record(rec: Any) -> None:
            time.sleep(0.3)  # the client leaves meanwhile
            write(rec)
        ledger.record = slow_record
        host, port = base.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/chat/completions", body=json.dumps(
            {"model": NAME, "stream": True, "max_tokens": 3, "messages": MESSAGES,
             "stream_options": {"include_usage": True}}),
            headers={"content-type": "application/json"})
        response = conn.getresponse()
        chunk: dict[str, Any] = {}
        while chunk.get("usage") is None:  # up to the usage chunk, the last before [DONE]
            line = response.readline()
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
        response.close()
        conn.close()
        time.sleep(1.0)  # the first write and any second one have finished
    ledger = Ledger(tmp_path / "l.sqlite")
    try:
        assert [r["request_id"] for r in ledger.records()].count(chunk["id"]) == 1
    finally:
        ledger.close()


def test_chunked_body_over_the_limit_is_refused(model_dir: Path, monkeypatch) -> None:
    """A chunked body has no content-length to check up front: the reader counts it."""
    from nanoseek.serve import api

    monkeypatch.setattr(api, "MAX_BODY_BYTES", 2**12)
    engine, tokenizer = make_engine(model_dir)
    with serving(engine, tokenizer) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        for size, status in ((2**11, 200), (2**14, 413)):
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            pieces = [json.dumps({"model": NAME, "max_tokens": 1, "messages": [
                {"role": "user", "content": "hi"}]}).encode(), b" " * size]  # JSON spaces
            conn.request("POST", "/chat/completions", body=iter(pieces), encode_chunked=True,
                         headers={"content-type": "application/json"})
            response = conn.getresponse()
            assert response.status == status, response.read()
            conn.close()


def test_request_counts_stop_growing_at_random_paths() -> None:
    import asyncio
    from collections import Counter

    from nanoseek.serve.api import MAX_COUNTED_PATHS, _CountRequests

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    counts: Counter[str] = Counter()
    middleware = _CountRequests(app, counts)
    for i in range(MAX_COUNTED_PATHS + 50):
        asyncio.run(middleware({"type": "http", "path": f"/x{i}"}, None, None))
    asyncio.run(middleware({"type": "http", "path": "/x0"}, None, None))
    assert len(counts) == MAX_COUNTED_PATHS + 1 and counts["(other)"] == 50
    assert counts["/x0"] == 2 and sum(counts.values()) == MAX_COUNTED_PATHS + 51
