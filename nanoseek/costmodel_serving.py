"""What serving costs: API list prices (``PROVIDERS``) for a ``Workload``, and the cost per
million tokens of your own deployment. The command line is ``nanoseek.costmodel``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nanoseek.costmodel_numbers import check_nonnegative, check_positive, markdown_table


# -------------------------------------------------------------------- serving
@dataclass(frozen=True)
class ApiPrice:
    """List prices in USD per 1M tokens; ``cache_hit`` = ``cache_miss`` where none existed."""

    model: str
    cache_hit: float
    cache_miss: float
    output: float
    date: str
    source: str


PROVIDERS: dict[str, ApiPrice] = {
    "deepseek-r1": ApiPrice("deepseek-reasoner (R1)", 0.14, 0.55, 2.19, "2025-01-20 launch",
                            "api-docs.deepseek.com news/news250120"),
    "deepseek-v3": ApiPrice("deepseek-chat (V3), full price", 0.07, 0.27, 1.10,
                            "2024-12-26 launch list price, in force from 2025-02-08",
                            "api-docs.deepseek.com quick_start/pricing"),
    "deepseek-v3-promo": ApiPrice("deepseek-chat (V3), launch promotion", 0.014, 0.14, 0.28,
                                  "2024-12-26 to 2025-02-08", "DeepSeek pricing page, Jan 2025"),
    "deepseek-v3.2": ApiPrice("deepseek-chat / -reasoner (V3.2)", 0.028, 0.28, 0.42,
                              "2025-12", "as listed in Roo-Code deepseek.ts"),
    "o1": ApiPrice("OpenAI o1", 7.50, 15.00, 60.00, "2024-12-17 (API launch)",
                   "openai.com/api/pricing (cached input 50% off)"),
    "gpt-4o": ApiPrice("OpenAI gpt-4o-2024-08-06", 1.25, 2.50, 10.00,
                       "2024-08-06; cached input from 2024-10-01", "openai.com/api/pricing"),
    "gpt-4o-launch": ApiPrice("OpenAI gpt-4o-2024-05-13", 5.00, 5.00, 15.00,
                              "2024-05-13 launch (no prompt caching)", "openai.com/api/pricing"),
}


@dataclass(frozen=True)
class Workload:
    """``requests`` requests of ``prompt_tokens`` in and ``output_tokens`` out each (reasoning
    tokens count as output); ``cache_hit`` is the fraction of prompt tokens that hit the
    provider's prefix cache."""

    prompt_tokens: int
    output_tokens: int
    cache_hit: float = 0.0
    requests: int = 1

    def __post_init__(self) -> None:
        check_nonnegative(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
                          requests=self.requests)
        if not 0.0 <= self.cache_hit <= 1.0:
            raise ValueError(f"cache_hit: a fraction in [0, 1], got {self.cache_hit}")


def get_provider(provider: str | ApiPrice) -> ApiPrice:
    if isinstance(provider, ApiPrice):
        return provider
    if provider not in PROVIDERS:
        raise ValueError(f"provider: unknown {provider!r}; choose one of "
                         f"{', '.join(PROVIDERS)}, all")
    return PROVIDERS[provider]


def api_cost_breakdown(workload: Workload, provider: str | ApiPrice) -> dict[str, float]:
    """Dollars for the cache-hit, cache-miss and output tokens of ``workload``, and the total."""
    price, w = get_provider(provider), workload
    hit = w.requests * w.prompt_tokens * w.cache_hit
    parts = {"cache_hit": hit * price.cache_hit / 1e6,
             "cache_miss": (w.requests * w.prompt_tokens - hit) * price.cache_miss / 1e6,
             "output": w.requests * w.output_tokens * price.output / 1e6}
    return parts | {"total": sum(parts.values())}


def api_cost(workload: Workload, provider: str | ApiPrice) -> float:
    """Dollars ``workload`` costs at ``provider``'s list prices."""
    return api_cost_breakdown(workload, provider)["total"]


def deployment_cost_per_million(tokens_per_second: float, price_per_hour: float) -> float:
    """Dollars per 1M tokens for a machine that costs ``price_per_hour`` and sustains
    ``tokens_per_second`` (measured, whole machine): price / (tok/s * 3600) * 1e6."""
    check_positive(tokens_per_second=tokens_per_second)
    check_nonnegative(price_per_hour=price_per_hour)
    return price_per_hour / (tokens_per_second * 3600) * 1e6


# -------------------------------------------------------------------- markdown (reports)
def api_markdown(workload: Workload, providers: Sequence[str] = tuple(PROVIDERS)) -> str:
    """Cost of ``workload`` at each provider's list prices."""
    rows = []
    for name in providers:
        p, b = PROVIDERS[name], api_cost_breakdown(workload, name)
        rows.append((name, f"${p.cache_hit:g} / ${p.cache_miss:g} / ${p.output:g}",
                     f"${b['total']:,.4f}", p.date))
    return markdown_table(("provider", "per 1M: hit / miss / output", "cost", "price as of"),
                          rows)
