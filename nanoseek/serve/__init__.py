"""The OpenAI/DeepSeek-compatible API server: ``create_app``, ``ServeConfig``, the ledger.

Files: ``api`` (the FastAPI app and routes), ``main`` (``nanoseek serve``), ``schemas``
(request validation, response shapes), ``prompts`` (request → engine work), ``responses``
(engine outputs → objects and SSE chunks), ``reasoning`` (the ``</think>`` split), ``worker``
(the one thread that drives the engine), ``limits`` (keys, rate limit, budgets), ``errors``
(OpenAI error bodies, DeepSeek codes), ``ledger`` (SQLite usage and cost), ``usage``
(``nanoseek usage``). Names are imported lazily, so ``import nanoseek.serve`` stays cheap.
"""

from __future__ import annotations

from nanoseek._lazy import lazy_exports

_EXPORTS = {
    "create_app": "nanoseek.serve.api",
    "ServeConfig": "nanoseek.serve.api",
    "Ledger": "nanoseek.serve.ledger",
    "Prices": "nanoseek.serve.ledger",
    "ReasoningParser": "nanoseek.serve.reasoning",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
