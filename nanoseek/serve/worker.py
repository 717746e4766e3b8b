"""The one place the server touches the engine: a thread that drives ``engine.step()``.

The engine (``nanoseek.infer.engine.LLMEngine``) is step-wise: ``add_request`` and ``abort``
only queue work under a lock, and ``step()`` runs one continuous batch and returns the
``RequestOutput`` of every request that changed. ``EngineWorker`` runs ``step()`` in a
background thread while requests are unfinished (and sleeps on an event otherwise), and hands
each output to the asyncio queue of the HTTP request that owns it with
``loop.call_soon_threadsafe``: the event loop never blocks on the model, and many HTTP requests
share every batch.

If a step raises (a bug, or out of memory), the requests in flight get an ``EngineFailure``
item and are aborted; the worker keeps serving new requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nanoseek.infer.sampling import SamplingParams

log = logging.getLogger("nanoseek.serve")


@dataclass(frozen=True)
class EngineFailure:
    """Put on a request's queue instead of an output when the engine failed or stopped."""

    message: str


class EngineWorker:
    """Drive ``engine`` from one thread; route its outputs to per-request asyncio queues.

    ``engine`` needs ``add_request(request_id, prompt_token_ids, params)``, ``step()``,
    ``abort(request_id)`` and ``has_unfinished()``.
    """

    def __init__(self, engine: Any, idle_wait: float = 0.05) -> None:
        self.engine = engine
        self.idle_wait = idle_wait
        self._routes: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.failures = 0
        self._failure_streak = 0

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="nanoseek-engine",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; requests still in flight are aborted and get an ``EngineFailure``."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._fail_all("the server is shutting down", abort=True)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_inflight(self) -> int:
        """Engine requests submitted and not finished (queued or running)."""
        with self._lock:
            return len(self._routes)

    # ------------------------------------------------------------------ requests
    def submit(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams,
               queue: asyncio.Queue) -> None:
        """Queue a request; its outputs (then maybe an ``EngineFailure``) arrive on ``queue``.

        Call from the event loop that reads ``queue``. Raises the engine's ``ValueError`` for a
        prompt it refuses (too long, ids outside the vocabulary).
        """
        if self._stopping:
            raise RuntimeError("the engine worker is stopped")
        loop = asyncio.get_running_loop()
        with self._lock:
            self._routes[request_id] = (loop, queue)
        try:
            self.engine.add_request(request_id, list(prompt_token_ids), params)
        except BaseException:
            with self._lock:
                self._routes.pop(request_id, None)
            raise
        self._wake.set()

    def abort(self, request_id: str) -> None:
        """Stop a request (client gone): the engine frees its cache blocks on its next step."""
        with self._lock:
            known = self._routes.pop(request_id, None) is not None
        if known:
            self.engine.abort(request_id)
            self._wake.set()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stopping:
            if not self.engine.has_unfinished():
                self._wake.wait(self.idle_wait)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as error:  # keep serving: fail the batch, not the server
                self._on_failure(error)
                continue
            self.steps += 1
            self._failure_streak = 0
            if not outputs:
                time.sleep(0.001)  # nothing schedulable right now (e.g. waiting for blocks)
            for output in outputs:
                self._deliver(output.request_id, output, output.finished)

    def _on_failure(self, error: Exception) -> None:
        """Fail and abort every request in flight; back off while failures repeat."""
        self.failures += 1
        self._failure_streak += 1
        if self._failure_streak == 1:
            log.exception("engine step failed; failing the requests in flight")
        self._fail_all(f"the engine failed ({type(error).__name__}: {error})", abort=True)
        time.sleep(min(1.0, 0.01 * 2**self._failure_streak))

    def _deliver(self, request_id: str, item: Any, last: bool) -> None:
        with self._lock:
            route = self._routes.pop(request_id, None) if last else self._routes.get(request_id)
        if route is None:
            return  # aborted meanwhile
        loop, queue = route
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _fail_all(self, message: str, abort: bool = False) -> None:
        with self._lock:
            request_ids = list(self._routes)
        for request_id in request_ids:
            if abort:
                self.engine.abort(request_id)
            self._deliver(request_id, EngineFailure(message), last=True)
