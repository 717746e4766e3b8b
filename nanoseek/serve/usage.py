"""``nanoseek usage``: what the API server's callers spent, and what it would cost elsewhere.

    nanoseek usage                                 # the ledger in ./nanoseek_usage.sqlite
    nanoseek usage --ledger runs/usage.sqlite --since 7d --json
    nanoseek usage --key sk-local                  # one key (hashed as the server stores it)

Reads the server's SQLite ledger (``nanoseek.serve.ledger``) and prints, per API key and model:
requests, prompt tokens (cache hits / misses), output tokens (of which reasoning) and dollars
at the prices the server billed. Then the same total tokens priced at every provider's list
prices in ``nanoseek.costmodel.PROVIDERS`` (``api_cost``), with the prefix-cache hit rate the
server measured. Bad input exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nanoseek.costmodel import PROVIDERS, Workload, api_cost, markdown_table
from nanoseek.serve.ledger import Ledger, key_id

DEFAULT_LEDGER = "nanoseek_usage.sqlite"
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([mhd])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
TOTAL_KEYS = ("requests", "prompt_tokens", "cache_hit_tokens", "cache_miss_tokens",
              "completion_tokens", "reasoning_tokens", "cost_usd")


def parse_since(text: str, now: float | None = None) -> float:
    """A start time: ``30m`` / ``12h`` / ``7d`` ago, or an ISO date/time (local time)."""
    now = time.time() if now is None else now
    match = _AGO.match(text.strip())
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"--since: cannot read {text!r}; write e.g. 7d, 12h, 30m or "
                         "2025-02-01") from None


def summarize(ledger: Ledger, key: str | None = None, since: float | None = None
              ) -> dict[str, Any]:
    """Rows per (key, model), their totals, and the totals at every provider's list prices."""
    rows = ledger.summary(key, since)
    totals = {name: sum(r[name] or 0 for r in rows) for name in TOTAL_KEYS}
    prompt, hit = totals["prompt_tokens"], totals["cache_hit_tokens"]
    workload = Workload(prompt_tokens=prompt, output_tokens=totals["completion_tokens"],
                        cache_hit=hit / prompt if prompt else 0.0)
    providers = {name: {"model": price.model, "cache_hit": price.cache_hit,
                        "cache_miss": price.cache_miss, "output": price.output,
                        "cost_usd": api_cost(workload, name)}
                 for name, price in PROVIDERS.items()}
    return {"rows": rows, "totals": totals, "cache_hit_rate": workload.cache_hit,
            "at_list_prices": providers}


def render(summary: dict[str, Any]) -> str:
    """The summary as markdown tables."""
    rows = [(r["key_id"], r["model"], r["requests"], r["prompt_tokens"],
             f"{r['cache_hit_tokens']:,} / {r['cache_miss_tokens']:,}",
             f"{r['completion_tokens']:,} ({r['reasoning_tokens']:,})", f"${r['cost_usd']:.6f}")
            for r in summary["rows"]]
    t = summary["totals"]
    rows.append(("total", "", t["requests"], t["prompt_tokens"],
                 f"{t['cache_hit_tokens']:,} / {t['cache_miss_tokens']:,}",
                 f"{t['completion_tokens']:,} ({t['reasoning_tokens']:,})",
                 f"${t['cost_usd']:.6f}"))
    spend = markdown_table(("key", "model", "requests", "prompt tokens", "cache hit / miss",
                            "output (reasoning)", "cost"), rows)
    ours = t["cost_usd"]
    compare = [(name, p["model"], f"${p['cache_hit']:g} / ${p['cache_miss']:g} / "
                f"${p['output']:g}", f"${p['cost_usd']:.6f}",
                f"{p['cost_usd'] / ours:.2f}x" if ours else "-")
               for name, p in summary["at_list_prices"].items()]
    table = markdown_table(("provider", "model", "per 1M: hit / miss / output", "same tokens",
                            "vs billed"), compare)
    return (f"{spend}\n\nPrefix-cache hit rate: {100 * summary['cache_hit_rate']:.1f}% of "
            f"prompt tokens.\n\nThe same tokens at list prices:\n\n{table}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoseek usage", description=__doc__.split("\n")[0])
    p.add_argument("--ledger", default=DEFAULT_LEDGER, help="default: %(default)s")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--key", help="only this API key (hashed as the ledger stores it)")
    who.add_argument("--key-id", help="only this key id as shown (key-… or anonymous)")
    p.add_argument("--since", help="only requests since: 7d, 12h, 30m or an ISO date")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = Path(args.ledger)
    try:
        if not path.is_file():
            raise ValueError(f"--ledger: {path} does not exist (start `nanoseek serve` first, "
                             "or point --ledger at its file)")
        since = parse_since(args.since) if args.since else None
        key = key_id(args.key) if args.key else args.key_id
        ledger = Ledger(path)
        try:
            summary = summarize(ledger, key, since)
        finally:
            ledger.close()
    except ValueError as error:
        print(f"nanoseek usage: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0
