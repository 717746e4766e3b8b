"""Who may call and how much: API keys (401), a per-key rate limit (429), budgets (402).

* Keys: ``Authorization: Bearer <key>`` must be one of the configured keys (compared in constant
  time); with no keys configured the server is open and every caller is ``anonymous``.
* Rate limit: a token bucket per key, ``rate_limit`` requests per minute with bursts up to the
  same number; over it, 429 with ``retry-after`` (seconds until a request is allowed again)
  and ``x-should-retry: true``, so the SDK waits and retries.
* Budget: with ``budget_usd`` set, a key whose ledger spend has reached it gets 402 (DeepSeek's
  "Insufficient Balance"); requests already running finish and are billed.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Sequence

from nanoseek.serve.errors import APIError
from nanoseek.serve.ledger import ANONYMOUS, Ledger, key_id


class KeyChecker:
    """Match a request's bearer token against the configured keys."""

    def __init__(self, api_keys: Sequence[str]) -> None:
        self.keys = [k for k in api_keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def identify(self, authorization: str | None) -> str:
        """The caller's ``key_id``; APIError 401 when keys are on and this one is wrong."""
        if not self.keys:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise APIError(401, "Authentication Fails: missing API key; send "
                           "'Authorization: Bearer <key>'")
        given = token.encode("utf-8", "surrogateescape")
        if not any(hmac.compare_digest(given, k.encode("utf-8")) for k in self.keys):
            raise APIError(401, "Authentication Fails: the API key is not valid")
        return key_id(token)


class RateLimiter:
    """Token buckets: ``per_minute`` requests per minute per key (None = unlimited)."""

    def __init__(self, per_minute: float | None) -> None:
        if per_minute is not None and not per_minute > 0:
            raise ValueError(f"--rate-limit: must be > 0 requests per minute, got {per_minute}")
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def acquire(self, key: str, now: float | None = None) -> None:
        """Take one request from ``key``'s bucket; APIError 429 when it is empty."""
        if self.per_minute is None:
            return
        now = time.monotonic() if now is None else now
        capacity, rate = self.per_minute, self.per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / rate)
                raise APIError(429, f"Rate Limit Reached: more than {self.per_minute:g} "
                               f"requests per minute; retry in {wait} s",
                               headers={"retry-after": str(wait), "x-should-retry": "true"})
            self._buckets[key] = (tokens - 1.0, now)


class Budget:
    """Per-key spend cap in USD against the ledger (None = no budgets)."""

    def __init__(self, budget_usd: float | None, ledger: Ledger | None) -> None:
        if budget_usd is not None and not (budget_usd >= 0 and math.isfinite(budget_usd)):
            raise ValueError(f"--budget: must be a finite amount >= 0 USD, got {budget_usd}")
        if budget_usd is not None and ledger is None:
            raise ValueError("--budget needs the ledger: drop --no-ledger")
        self.budget_usd, self.ledger = budget_usd, ledger

    def balance(self, key: str) -> float | None:
        """USD left for ``key`` (None without budgets)."""
        if self.budget_usd is None or self.ledger is None:
            return None
        return self.budget_usd - self.ledger.spent(key)

    def check(self, key: str) -> None:
        """APIError 402 when ``key`` has spent its budget."""
        left = self.balance(key)
        if left is not None and left <= 0:
            raise APIError(402, f"Insufficient Balance: this key has spent its budget of "
                           f"${self.budget_usd:.2f}; see GET /user/balance")
