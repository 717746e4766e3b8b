"""Reward components run in worker processes with a hard per-call timeout.

A job is ``(fn, completion, problem, kwargs)`` with ``fn`` a module-level function (pickled by
name). ``WorkerPool.run`` sends one job per idle worker and kills, then replaces, a worker whose
job outlives its deadline; a worker that dies or a job that raises scores as an error. Workers
fork from a clean fork server that has imported ``preload`` once (never from the caller, which
may hold torch threads).
"""

from __future__ import annotations

import importlib
import math
import multiprocessing as mp
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from nanoseek.data.tasks import Problem

Job = tuple[Callable[..., float], str, Problem, dict]
Result = tuple[str, float | str]  # ("ok", value) | ("error", message) | ("timeout", message)


def call_component(fn: Callable[..., float], completion: str, problem: Problem,
                   kwargs: dict) -> Result:
    """Run one component; exceptions and non-finite values become ("error", message)."""
    try:
        value = float(fn(completion, problem, **kwargs))
    except Exception as e:
        return "error", f"{type(e).__name__}: {e}"[:300]
    return ("ok", value) if math.isfinite(value) else ("error", f"non-finite reward {value}")


def _worker_main(conn: Connection, preload: tuple[str, ...]) -> None:
    for module in preload:
        importlib.import_module(module)
    conn.send(("ready", 0.0))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        except Exception as e:  # a job that does not unpickle here
            conn.send(("error", f"cannot receive the job: {type(e).__name__}: {e}"[:300]))
            continue
        if job is None:
            return
        conn.send(call_component(*job))


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    job: int | None = None
    deadline: float = 0.0


def _stop(worker: _Worker) -> None:
    worker.process.kill()
    worker.process.join(timeout=5)
    worker.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        _stop(worker)


def _context(preload: tuple[str, ...]) -> mp.context.BaseContext:
    """Workers never fork this process (it may hold torch threads): they fork from a clean
    fork server that has imported ``preload`` once (so a replaced worker starts in ms), or are
    spawned where there is no fork server."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))  # no effect once the server runs
    return ctx


class WorkerPool:
    """``size`` spawned processes; ``run`` sends one job per idle worker and kills (then
    replaces) a worker whose job outlives its deadline."""

    def __init__(self, size: int, preload: tuple[str, ...], start_timeout_s: float = 120.0):
        self._ctx = _context(preload)
        self._preload, self._start_timeout_s = preload, start_timeout_s
        self.workers = [self._spawn() for _ in range(size)]
        self._finalizer = weakref.finalize(self, _stop_all, self.workers)

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self._preload),
                                    daemon=True, name="nanoseek-reward")
        process.start()
        child.close()
        return _Worker(process, parent, started=time.monotonic())

    def _replace(self, i: int) -> None:
        _stop(self.workers[i])
        self.workers[i] = self._spawn()

    def run(self, jobs: Sequence[Job], timeout_s: float) -> list[Result]:
        results: list[Result | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        while pending or any(w.job is not None for w in self.workers):
            self._dispatch(jobs, pending, results, timeout_s)
            self._collect(results)
            self._expire(results, timeout_s)
        return results  # type: ignore[return-value]

    def _dispatch(self, jobs: Sequence[Job], pending: deque, results: list, timeout_s: float):
        for w in self.workers:
            while w.ready and w.job is None and pending:
                i = pending.popleft()
                try:
                    w.conn.send(jobs[i])  # pickles first, so a failure writes nothing
                except Exception as e:
                    results[i] = ("error", f"cannot send the job: {type(e).__name__}: {e}"[:300])
                    continue
                w.job, w.deadline = i, time.monotonic() + timeout_s

    def _collect(self, results: list) -> None:
        waiting = [w for w in self.workers if not w.ready or w.job is not None]
        deadlines = [w.deadline if w.ready else w.started + self._start_timeout_s for w in waiting]
        ready = wait([w.conn for w in waiting], max(0.0, min(deadlines) - time.monotonic()))
        for i, w in enumerate(self.workers):
            if w.conn not in ready:
                continue
            try:
                status, value = w.conn.recv()
            except (EOFError, OSError):
                if not w.ready:
                    raise RuntimeError(
                        "a reward worker failed to start (see its stderr). Workers re-import "
                        "the main script: one that scores rewards must run under "
                        "`if __name__ == '__main__':`") from None
                results[w.job] = ("error", "the reward worker died")
                self._replace(i)
                continue
            if status == "ready":
                w.ready = True
            else:
                results[w.job], w.job = (status, value), None

    def _expire(self, results: list, timeout_s: float) -> None:
        now = time.monotonic()
        for i, w in enumerate(self.workers):
            if w.job is not None and now >= w.deadline:
                results[w.job] = ("timeout", f"no result within {timeout_s:g} s")
                self._replace(i)
            elif not w.ready and now >= w.started + self._start_timeout_s:
                raise RuntimeError(f"a reward worker did not start in {self._start_timeout_s} s")

    def close(self) -> None:
        self._finalizer()
