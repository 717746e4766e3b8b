"""The OpenAI/DeepSeek-compatible API server: ``create_app``, ``ServeConfig``, the ledger.

Files: ``api`` (the FastAPI app and routes), ``main`` (``nanoseek serve``), ``schemas``
(request validation, response shapes), ``prompts`` (request → engine work), ``responses``
(engine outputs → objects and SSE chunks), ``reasoning`` (the ``</think>`` split), ``worker``
(the one thread that drives the engine), ``limits`` (keys, rate limit, budgets), ``errors``
(OpenAI error bodies, DeepSeek codes), ``ledger`` (SQLite usage and cost), ``usage``
(``nanoseek usage``). Names are imported lazily, so ``import nanoseek.serve`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "nanoseek.serve.api",
    "ServeConfig": "nanoseek.serve.api",
    "Ledger": "nanoseek.serve.ledger",
    "Prices": "nanoseek.serve.ledger",
    "ReasoningParser": "nanoseek.serve.reasoning",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nanoseek.serve' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
