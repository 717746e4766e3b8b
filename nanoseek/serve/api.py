"""The OpenAI/DeepSeek-compatible HTTP API (FastAPI) over the continuous-batching engine.

Routes, each served bare, under ``/v1`` and under ``/beta`` (the SDK appends paths to its
``base_url``; DeepSeek's beta features live under ``/beta``):

* ``POST /chat/completions``: chat, streamed or not, thinking mode, prefix completion;
* ``POST /completions``: legacy text completion, FIM with ``suffix``, ``echo``, ``logprobs``;
* ``GET /models``, ``GET /models/{id}``: the served name and DeepSeek's aliases;
* ``GET /user/balance``: DeepSeek's balance object (budgets from ``--budget``);
* ``GET /health``: liveness and engine statistics (no key needed);
* ``GET /``: the web UI (``static/index.html``) when installed, else a 404 error.

``create_app(engine, tokenizer, ServeConfig(...))`` builds the app (tests run it with uvicorn in
a thread); ``nanoseek.serve.main`` is the ``nanoseek serve`` command. Request handling lives
in ``prompts`` (request → engine work) and ``responses`` (engine outputs → wire objects); the
engine is driven only through ``worker.EngineWorker``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.staticfiles import StaticFiles

from nanoseek.serve.errors import APIError, error_body, install_error_handlers
from nanoseek.serve.ledger import (
    CHAT,
    REASONER,
    Ledger,
    Prices,
    UsageRecord,
    default_prices,
)
from nanoseek.serve.limits import Budget, KeyChecker, RateLimiter
from nanoseek.serve.prompts import ModelInfo, Plan, chat_plan, check_model, completion_plan
from nanoseek.serve.responses import DONE, KEEPALIVE, Collector, sse
from nanoseek.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Head,
    model_card,
    models_list,
    parse_body,
)
from nanoseek.serve.worker import EngineFailure, EngineWorker

log = logging.getLogger("nanoseek.serve")
STATIC_DIR = Path(__file__).parent / "static"
PREFIXES = ("", "/v1", "/beta")
MAX_BODY_BYTES = 16 * 2**20
MAX_COUNTED_PATHS = 64
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass
class ServeConfig:
    """Server settings (``nanoseek serve`` flags). ``reasoning``: auto | on | off."""

    served_model_name: str = "nanoseek"
    api_keys: list[str] = field(default_factory=list)
    reasoning: str = "auto"
    ledger_path: str | Path | None = None
    budget_usd: float | None = None
    prices: dict[str, Prices] = field(default_factory=default_prices)
    rate_limit: float | None = None
    max_pending: int = 512
    keepalive_s: float = 5.0
    disconnect_poll_s: float = 1.0


class EngineError(Exception):
    """The engine failed or stopped while this request was running."""


def thinking_available(reasoning: str, tokenizer: Any) -> bool:
    """Resolve ``--reasoning``: auto follows ``tokenizer.has_think_tokens``."""
    if reasoning not in ("auto", "on", "off"):
        raise ValueError(f"--reasoning: {reasoning!r} must be auto, on or off")
    if reasoning == "on" and not tokenizer.has_think_tokens:
        raise ValueError("--reasoning on: the tokenizer has no single <think> and </think> "
                         "tokens; use --reasoning auto or off")
    return reasoning != "off" and tokenizer.has_think_tokens


class Server:
    """Everything a request needs: model info, the worker, limits, ledger, prices."""

    def __init__(self, engine: Any, tokenizer: Any, config: ServeConfig) -> None:
        self.config, self.tokenizer = config, tokenizer
        self.info = ModelInfo(config.served_model_name, tokenizer, engine.max_model_len,
                              thinking_available(config.reasoning, tokenizer))
        self.worker = EngineWorker(engine)
        self.ledger = Ledger(config.ledger_path) if config.ledger_path else None
        self.keys = KeyChecker(config.api_keys)
        self.rate = RateLimiter(config.rate_limit)
        self.budget = Budget(config.budget_usd, self.ledger)
        self.created = int(time.time())
        model_json = json.dumps(engine.config.to_hf_config(), sort_keys=True, default=str)
        digest = hashlib.sha256((tokenizer.fingerprint() + model_json).encode()).hexdigest()
        self.fingerprint = f"fp_{digest[:10]}_nanoseek"
        self.request_counts: Counter[str] = Counter()

    # ------------------------------------------------------------------ admission
    def identify(self, request: Request) -> str:
        return self.keys.identify(request.headers.get("authorization"))

    def admit(self, request: Request) -> str:
        """Key (401), rate limit (429), budget (402), body size (413); returns the key id."""
        key = self.identify(request)
        self.rate.acquire(key)
        self.budget.check(key)
        length = request.headers.get("content-length", "0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES // 2**20} MiB")
        return key

    def head(self, object_: str, model: str, prefix: str) -> Head:
        request_id = f"{prefix}{uuid.uuid4().hex}" if prefix else str(uuid.uuid4())
        return Head(request_id, object_, int(time.time()), model, self.fingerprint)

    # ------------------------------------------------------------------ serving a plan
    async def serve(self, plan: Plan, request: Request, key: str) -> Response:
        """Run ``plan`` and answer: an SSE stream or one JSON object."""
        if not self.worker.alive:
            raise APIError(503, "the engine is not running; retry later",
                           headers={"x-should-retry": "true", "retry-after": "1"})
        if self.worker.num_inflight + len(plan.jobs) > self.config.max_pending:
            raise APIError(503, f"Server Overloaded: {self.worker.num_inflight} requests in "
                           "flight; retry later", headers={"x-should-retry": "false"})
        queue: asyncio.Queue = asyncio.Queue()
        pending: set[str] = set()
        for job in plan.jobs:
            try:
                self.worker.submit(job.request_id, job.prompt_ids, job.params, queue)
            except BaseException as error:  # the jobs already in would run for nobody
                for request_id in pending:
                    self.worker.abort(request_id)
                if isinstance(error, ValueError):
                    raise APIError(400, f"the engine refused the prompt: {error}") from None
                if isinstance(error, Exception):  # stopping, or an engine fault
                    raise APIError(503, f"the engine could not take the request: {error}",
                                   headers={"x-should-retry": "true"}) from None
                raise
            pending.add(job.request_id)
        collector = Collector(plan, self.tokenizer)
        if plan.stream:
            return StreamingResponse(self._stream(plan, collector, queue, pending, key),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        return await self._complete(plan, collector, queue, pending, key, request)

    async def _outputs(self, queue: asyncio.Queue, pending: set[str], tick: float
                       ) -> AsyncIterator[Any]:
        """Engine outputs until every job finished; None every ``tick`` seconds of silence."""
        while pending:
            try:
                item = await asyncio.wait_for(queue.get(), tick)
            except TimeoutError:
                yield None
                continue
            if isinstance(item, EngineFailure):
                raise EngineError(item.message)
            if item.finished:
                pending.discard(item.request_id)
            yield item

    async def _complete(self, plan: Plan, collector: Collector, queue: asyncio.Queue,
                        pending: set[str], key: str, request: Request) -> Response:
        finished, poll = False, self.config.disconnect_poll_s
        last_check = time.monotonic()
        try:
            async for output in self._outputs(queue, pending, poll):
                if output is not None:
                    collector.add(output)
                if output is None or time.monotonic() - last_check >= poll:
                    last_check = time.monotonic()  # every poll_s, however fast the steps
                    if await request.is_disconnected():
                        break  # nobody is there to read the answer
            finished = not pending
        except EngineError as error:
            raise APIError(503, f"the request could not finish: {error}",
                           headers={"x-should-retry": "true"}) from None
        finally:
            record = self._abort_and_bill(plan, collector, pending, key)
            if not finished:
                self._write_later(record)
        if not finished:
            return Response(status_code=499)
        await self._write(record)
        return JSONResponse(collector.response())

    async def _stream(self, plan: Plan, collector: Collector, queue: asyncio.Queue,
                      pending: set[str], key: str) -> AsyncIterator[bytes]:
        record, written = None, False
        try:
            async for output in self._outputs(queue, pending, self.config.keepalive_s):
                if output is None:
                    yield KEEPALIVE
                    continue
                for delta in collector.add(output):
                    for chunk in collector.chunks(delta):
                        yield sse(chunk)
            if plan.include_usage:
                yield sse(collector.usage_chunk())
            record = self._abort_and_bill(plan, collector, pending, key)
            written = True  # before the await: a cancelled write still runs to the end in
            await self._write(record)  # its thread, and billing it again would double it
            yield DONE
        except EngineError as error:
            yield sse(error_body(f"the request could not finish: {error}", "server_error",
                                 None, "server_overloaded"))
            yield DONE
        finally:
            if not written:  # cancelled (client gone) or failed: bill what was computed
                record = record or self._abort_and_bill(plan, collector, pending, key)
                self._write_later(record)

    # ------------------------------------------------------------------ billing
    def _abort_and_bill(self, plan: Plan, collector: Collector, pending: set[str],
                        key: str) -> UsageRecord | None:
        for request_id in list(pending):
            self.worker.abort(request_id)
        pending.clear()
        usage = collector.usage()
        if self.ledger is None or usage.prompt_tokens + usage.completion_tokens == 0:
            return None
        prices = self.config.prices.get(plan.head.model) or \
            self.config.prices[REASONER if plan.thinking else CHAT]
        record = UsageRecord(plan.head.id, key, plan.head.model, plan.endpoint,
                             usage.prompt_tokens, usage.cache_hit_tokens,
                             usage.completion_tokens, usage.reasoning_tokens, prices,
                             collector.finish, time.time())
        log.info("%s key=%s model=%s prompt=%d (hit %d) output=%d (reasoning %d) cost=$%.6f",
                 record.request_id, key, record.model, record.prompt_tokens,
                 record.cache_hit_tokens, record.completion_tokens, record.reasoning_tokens,
                 record.cost_usd)
        return record

    async def _write(self, record: UsageRecord | None) -> None:
        """Append ``record`` to the ledger (off the event loop) before answering."""
        if record is not None and self.ledger is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.ledger.record,
                                                                 record)
            except (OSError, sqlite3.Error) as error:  # the answer still goes out
                log.error("ledger write failed for %s: %s", record.request_id, error)

    def _write_later(self, record: UsageRecord | None) -> None:
        """Append ``record`` without waiting (from a cancelled or failed request)."""
        if record is None or self.ledger is None:
            return
        future = asyncio.get_running_loop().run_in_executor(None, self.ledger.record, record)
        future.add_done_callback(lambda f: f.exception() and log.error(
            "ledger write failed for %s: %s", record.request_id, f.exception()))

    # ------------------------------------------------------------------ small routes
    def balance(self, key: str) -> dict[str, Any]:
        """DeepSeek's ``/user/balance`` object (amounts are strings, USD)."""
        left = self.budget.balance(key)
        spent = self.ledger.spent(key) if self.ledger is not None else 0.0
        infos = [] if left is None else [{
            "currency": "USD", "total_balance": f"{max(left, 0.0):.2f}",
            "granted_balance": f"{max(left, 0.0):.2f}", "topped_up_balance": "0.00"}]
        return {"is_available": left is None or left > 0, "balance_infos": infos,
                "spent_usd": round(spent, 8), "budget_usd": self.budget.budget_usd}

    def health(self) -> dict[str, Any]:
        stats = getattr(self.worker.engine, "stats", None)
        return {"status": "ok" if self.worker.alive else "stopped",
                "model": self.info.served_name, "thinking": self.info.thinking_available,
                "max_model_len": self.info.max_model_len, "inflight": self.worker.num_inflight,
                "engine_steps": self.worker.steps, "engine_failures": self.worker.failures,
                "requests": sum(self.request_counts.values()),
                "prices": {name: dataclasses.asdict(p) for name, p in self.config.prices.items()},
                "engine": stats() if callable(stats) else {}}


class _CountRequests:
    """Pure-ASGI middleware counting requests per path (``Server.request_counts``); past
    ``MAX_COUNTED_PATHS`` distinct paths, new ones count as ``(other)`` (random URLs must not
    grow the server's memory)."""

    def __init__(self, app: Any, counts: Counter[str]) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            known = path in self.counts or len(self.counts) < MAX_COUNTED_PATHS
            self.counts[path if known else "(other)"] += 1
        await self.app(scope, receive, send)


def create_app(engine: Any, tokenizer: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (an ``LLMEngine``) with ``tokenizer``."""
    server = Server(engine, tokenizer, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.worker.start()
        try:
            yield
        finally:
            server.worker.stop()
            if server.ledger is not None:
                server.ledger.close()

    app = FastAPI(title="nanoseek", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.server = server
    app.add_middleware(_CountRequests, counts=server.request_counts)
    install_error_handlers(app)
    _add_routes(app, server)
    return app


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) once it passes ``MAX_BODY_BYTES`` — also a chunked
    body, which has no ``content-length`` for ``Server.admit`` to check."""
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"request body over {MAX_BODY_BYTES // 2**20} MiB")
        parts.append(part)
    return b"".join(parts)


def _add_routes(app: FastAPI, server: Server) -> None:
    async def chat(request: Request) -> Response:
        key = server.admit(request)
        body = parse_body(ChatCompletionRequest, await read_body(request))
        head = server.head("chat.completion.chunk" if body.stream else "chat.completion",
                           body.model, "")
        return await server.serve(chat_plan(body, server.info, head), request, key)

    async def completions(request: Request) -> Response:
        key = server.admit(request)
        body = parse_body(CompletionRequest, await read_body(request))
        head = server.head("text_completion", body.model, "cmpl-")
        return await server.serve(completion_plan(body, server.info, head), request, key)

    async def models(request: Request) -> dict[str, Any]:
        server.identify(request)
        return models_list(server.info.model_ids, server.created)

    async def model(request: Request, model_id: str) -> dict[str, Any]:
        server.identify(request)
        try:
            check_model(model_id, server.info)
        except APIError as error:
            raise APIError(404, error.message, param="model", code="model_not_found") from None
        return model_card(model_id, server.created)

    async def balance(request: Request) -> dict[str, Any]:
        return server.balance(server.identify(request))

    async def health() -> dict[str, Any]:
        return server.health()

    for prefix in PREFIXES:
        app.add_api_route(f"{prefix}/chat/completions", chat, methods=["POST"])
        app.add_api_route(f"{prefix}/completions", completions, methods=["POST"])
        app.add_api_route(f"{prefix}/models", models, methods=["GET"])
        app.add_api_route(f"{prefix}/models/{{model_id}}", model, methods=["GET"])
        app.add_api_route(f"{prefix}/user/balance", balance, methods=["GET"])
        app.add_api_route(f"{prefix}/health", health, methods=["GET"])

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        raise APIError(404, "no web UI is installed (nanoseek/serve/static/index.html)")

