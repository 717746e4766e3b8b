"""The usage and cost ledger: every request's tokens and dollars, per API key, in SQLite.

Prices are USD per million tokens, three of them as DeepSeek bills: prompt tokens that hit the
prefix cache, prompt tokens that miss it, and output tokens (reasoning included). The defaults
are DeepSeek's launch list prices from ``nanoseek.costmodel.PROVIDERS``: ``deepseek-reasoner``
(R1) $0.14 / $0.55 / $2.19 and ``deepseek-chat`` (V3) $0.07 / $0.27 / $1.10.

The ledger is written durably: WAL journal, ``synchronous=FULL`` (each commit is fsynced before
the request's record is considered written), one transaction per request. Keys are never
stored: a key is recorded as ``key_id(key)``, a short SHA-256 digest (``anonymous`` when the
server runs without keys).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseek.costmodel import PROVIDERS, ApiPrice

ANONYMOUS = "anonymous"
REASONER, CHAT = "deepseek-reasoner", "deepseek-chat"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    cache_hit_tokens INTEGER NOT NULL,
    cache_miss_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    price_hit REAL NOT NULL,
    price_miss REAL NOT NULL,
    price_output REAL NOT NULL,
    cost_usd REAL NOT NULL,
    finish TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_key ON usage (key_id, created);
"""


@dataclass(frozen=True)
class Prices:
    """USD per 1M tokens: prompt cache hit, prompt cache miss, output."""

    cache_hit: float
    cache_miss: float
    output: float

    @classmethod
    def from_provider(cls, price: ApiPrice) -> Prices:
        return cls(price.cache_hit, price.cache_miss, price.output)

    def cost(self, cache_hit_tokens: int, cache_miss_tokens: int, output_tokens: int) -> float:
        """Dollars for these token counts."""
        return (cache_hit_tokens * self.cache_hit + cache_miss_tokens * self.cache_miss
                + output_tokens * self.output) / 1e6


def default_prices() -> dict[str, Prices]:
    """``deepseek-reasoner`` at R1's and ``deepseek-chat`` at V3's launch list prices."""
    return {REASONER: Prices.from_provider(PROVIDERS["deepseek-r1"]),
            CHAT: Prices.from_provider(PROVIDERS["deepseek-v3"])}


def parse_price(spec: str) -> tuple[str, Prices]:
    """``"NAME=HIT,MISS,OUTPUT"`` (USD per 1M) or ``"NAME=PROVIDER"`` (a costmodel provider).

    ``NAME`` is a model name as requests give it (the served name or a DeepSeek alias)."""
    name, sep, value = spec.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"--price: {spec!r} must look like NAME=HIT,MISS,OUTPUT (USD per 1M "
                         f"tokens) or NAME=PROVIDER ({', '.join(PROVIDERS)})")
    value = value.strip()
    if value in PROVIDERS:
        return name.strip(), Prices.from_provider(PROVIDERS[value])
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(not (p >= 0 and p < float("inf")) for p in parts):
        raise ValueError(f"--price: {value!r} must be three non-negative numbers HIT,MISS,OUTPUT "
                         f"or a provider name ({', '.join(PROVIDERS)})")
    return name.strip(), Prices(*parts)


def key_id(api_key: str | None) -> str:
    """How a key appears in the ledger: ``key-`` + 12 hex digits of its SHA-256."""
    if not api_key:
        return ANONYMOUS
    return "key-" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class UsageRecord:
    """One request's usage and cost, as stored."""

    request_id: str
    key_id: str
    model: str
    endpoint: str
    prompt_tokens: int
    cache_hit_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    prices: Prices
    finish: str = "stop"
    created: float = 0.0

    @property
    def cache_miss_tokens(self) -> int:
        return self.prompt_tokens - self.cache_hit_tokens

    @property
    def cost_usd(self) -> float:
        return self.prices.cost(self.cache_hit_tokens, self.cache_miss_tokens,
                                self.completion_tokens)


class Ledger:
    """An append-only SQLite table of ``UsageRecord`` rows; safe to share between threads.

    ``spent(key)`` is kept in memory (loaded once per key from the table) so budget checks do
    not read the disk on every request.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._spent: dict[str, float] = {}

    def record(self, rec: UsageRecord) -> None:
        """Append ``rec`` in its own committed (fsynced) transaction."""
        row = (rec.created or time.time(), rec.request_id, rec.key_id, rec.model, rec.endpoint,
               rec.prompt_tokens, rec.cache_hit_tokens, rec.cache_miss_tokens,
               rec.completion_tokens, rec.reasoning_tokens, rec.prices.cache_hit,
               rec.prices.cache_miss, rec.prices.output, rec.cost_usd, rec.finish)
        with self._lock:
            self._load_spent(rec.key_id)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO usage (created, request_id, key_id, model, endpoint, "
                    "prompt_tokens, cache_hit_tokens, cache_miss_tokens, completion_tokens, "
                    "reasoning_tokens, price_hit, price_miss, price_output, cost_usd, finish) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._spent[rec.key_id] += rec.cost_usd

    def spent(self, key: str) -> float:
        """Dollars ``key`` (a ``key_id``) has spent so far."""
        with self._lock:
            return self._load_spent(key)

    def _load_spent(self, key: str) -> float:
        if key not in self._spent:
            row = self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM usage WHERE key_id = ?",
                                   (key,)).fetchone()
            self._spent[key] = float(row[0])
        return self._spent[key]

    def summary(self, key: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Totals per (key, model): requests, token counts and dollars, biggest spend first."""
        where, args = _filters(key, since)
        query = ("SELECT key_id, model, COUNT(*), SUM(prompt_tokens), SUM(cache_hit_tokens), "
                 "SUM(cache_miss_tokens), SUM(completion_tokens), SUM(reasoning_tokens), "
                 f"SUM(cost_usd) FROM usage {where} GROUP BY key_id, model "
                 "ORDER BY SUM(cost_usd) DESC, key_id, model")
        names = ("key_id", "model", "requests", "prompt_tokens", "cache_hit_tokens",
                 "cache_miss_tokens", "completion_tokens", "reasoning_tokens", "cost_usd")
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [dict(zip(names, row, strict=True)) for row in rows]

    def records(self, key: str | None = None, since: float | None = None) -> list[dict[str, Any]]:
        """Every stored row (oldest first), as dicts."""
        where, args = _filters(key, since)
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM usage {where} ORDER BY id", args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _filters(key: str | None, since: float | None) -> tuple[str, tuple[Any, ...]]:
    clauses, args = [], []
    if key is not None:
        clauses.append("key_id = ?")
        args.append(key)
    if since is not None:
        clauses.append("created >= ?")
        args.append(since)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(args)

