"""``nanoseek cost``: what training and serving cost, in GPU-hours and dollars.

    nanoseek cost v3                                   # DeepSeek-V3's Table 1, from its inputs
    nanoseek cost train --preset deepseek-v3 --tokens 14.8T --gpu h800 --mfu 0.44 --price 2
    nanoseek cost train --preset small --tokens 1B --gpu cpu --tokens-per-second 900
    nanoseek cost api --prompt-tokens 2K --cache-hit 0.5 --output-tokens 500 --requests 1M
    nanoseek cost deploy --tokens-per-second 14.8K --price-per-hour 16
    nanoseek cost hardware                             # the peak-FLOPS table (cpu: measured)

Every subcommand takes ``--json``. Training FLOPs per token come from ``nanoseek.cost``
(``6 * N_active + 6 * L * T * H * (d_qk + d_v)``); GPU-hours follow from either an MFU (fraction
of the hardware's dense peak) or a measured throughput (tokens/s per GPU, or GPU-hours per
trillion tokens, the unit DeepSeek publishes). Bad input exits with code 2 and a message.

MFU here is model FLOPs (the formula above) over dense peak; DeepSeek-V3 ran its GEMMs in FP8,
so its MFU against the FP8 peak is half the figure against the BF16 peak; both are reported.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from nanoseek import cost
from nanoseek.config import ModelConfig, get_preset

TRILLION = 10**12
_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


# -------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class Hardware:
    """One accelerator: dense (no 2:4 sparsity) tensor peaks in TFLOPS by precision."""

    name: str
    label: str
    peak_tflops: dict[str, float]
    memory_gb: float | None
    bandwidth_tbs: float | None
    source: str

    def peak_flops(self, precision: str) -> float:
        """Dense peak in FLOP/s for ``precision`` (ValueError if the chip has no such peak)."""
        if precision not in self.peak_tflops:
            raise ValueError(f"precision: {self.name} has no {precision!r} peak; use one of "
                             f"{', '.join(self.peak_tflops)}")
        return self.peak_tflops[precision] * 1e12


_NV = "NVIDIA datasheet, dense = the 'with sparsity' figure / 2"
HARDWARE: dict[str, Hardware] = {h.name: h for h in (
    Hardware("h800", "H800 SXM5 80GB", {"bf16": 989.5, "fp8": 1979.0}, 80, 3.35,
             "H100 SXM compute (H800 cuts NVLink to 400 GB/s and FP64); " + _NV),
    Hardware("h100", "H100 SXM5 80GB", {"bf16": 989.5, "fp8": 1979.0}, 80, 3.35, _NV),
    Hardware("h200", "H200 SXM 141GB", {"bf16": 989.5, "fp8": 1979.0}, 141, 4.8,
             "H100 compute, HBM3e; " + _NV),
    Hardware("h20", "H20 96GB", {"bf16": 148.0, "fp8": 296.0}, 96, 4.0, "NVIDIA H20 spec, dense"),
    Hardware("a100", "A100 SXM4 80GB", {"bf16": 312.0}, 80, 2.039, _NV + " (no FP8)"),
    Hardware("b200", "B200 (HGX)", {"bf16": 2250.0, "fp8": 4500.0}, 180, 8.0,
             "HGX B200: 36 / 72 PFLOPS per 8 GPUs with sparsity, halved"),
    Hardware("rtx4090", "GeForce RTX 4090", {"bf16": 165.2, "fp8": 330.3}, 24, 1.008,
             "Ada whitepaper, FP32 accumulate, dense"),
)}
CPU_NOTE = "measured on this machine (best fp32 2048^3 matmul rate), not a datasheet figure"


def get_hardware(name: str | Hardware) -> Hardware:
    """A ``HARDWARE`` entry by name; ``"cpu"`` runs a quick fp32 matmul benchmark."""
    if isinstance(name, Hardware):
        return name
    key = name.lower()
    if key == "cpu":  # the trainer's MFU peak: measured now, the best seen here kept
        import torch

        from nanoseek.train.metrics import peak_flops

        flops = peak_flops(torch.device("cpu"), torch.float32)[0]
        return Hardware("cpu", f"this CPU ({torch.get_num_threads()} threads)",
                        {"fp32": round(flops / 1e12, 4)}, None, None, CPU_NOTE)
    if key not in HARDWARE:
        raise ValueError(f"gpu: unknown {name!r}; choose one of {', '.join(HARDWARE)}, cpu")
    return HARDWARE[key]


# -------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingCost:
    """The cost of training on ``tokens`` tokens; ``dollars = gpu_hours * price_per_hour``.

    ``mfu`` = flops_per_token * tokens_per_second_per_gpu / peak_flops_per_gpu, whichever of
    the three was given. ``basis`` says which: "mfu", "tokens_per_second" or
    "gpu_hours_per_trillion"."""

    tokens: int
    seq_len: int
    include_mtp: bool
    flops_per_token: float
    total_flops: float
    hardware: str
    precision: str
    peak_flops_per_gpu: float
    basis: str
    mfu: float
    tokens_per_second_per_gpu: float
    gpu_hours: float
    price_per_hour: float
    dollars: float
    num_gpus: int | None
    wall_clock_days: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"flops_formula": cost.TRAIN_FLOPS_FORMULA}


def training_cost(config: ModelConfig, tokens: int, hardware: str | Hardware = "h800", *,
                  mfu: float | None = None, tokens_per_second: float | None = None,
                  gpu_hours_per_trillion: float | None = None, price_per_hour: float = 2.0,
                  seq_len: int = 4096, precision: str | None = None,
                  include_mtp: bool = False, num_gpus: int | None = None) -> TrainingCost:
    """GPU-hours and dollars to train ``config`` on ``tokens`` tokens of length ``seq_len``.

    Give exactly one of ``mfu`` (0 < mfu <= 1, against the dense ``precision`` peak),
    ``tokens_per_second`` (measured, per GPU) or ``gpu_hours_per_trillion`` (measured; V3:
    180,000). ``precision`` defaults to bf16 (the first listed peak where there is none).
    """
    hw = get_hardware(hardware)
    precision = precision or ("bf16" if "bf16" in hw.peak_tflops else next(iter(hw.peak_tflops)))
    peak = hw.peak_flops(precision)
    _check_positive(tokens=tokens, seq_len=seq_len)
    _check_nonnegative(price_per_hour=price_per_hour)
    if num_gpus is not None:
        _check_positive(num_gpus=num_gpus)
    given = {k: v for k, v in (("mfu", mfu), ("tokens_per_second", tokens_per_second),
                               ("gpu_hours_per_trillion", gpu_hours_per_trillion)) if v is not None}
    if len(given) != 1:
        raise ValueError("throughput: give exactly one of mfu, tokens_per_second, "
                         f"gpu_hours_per_trillion (got {', '.join(given) or 'none'})")
    basis, value = next(iter(given.items()))
    _check_positive(**{basis: value})
    if mfu is not None and mfu > 1:
        raise ValueError(f"mfu: a fraction of peak in (0, 1], got {mfu}; write 40% as 0.4")
    fpt = cost.train_flops_per_token(config, seq_len, include_mtp)
    if gpu_hours_per_trillion is not None:
        gpu_hours = tokens * gpu_hours_per_trillion / TRILLION  # exact for integer inputs
        tps = TRILLION / (gpu_hours_per_trillion * 3600)
    else:
        tps = tokens_per_second if tokens_per_second is not None else mfu * peak / fpt
        gpu_hours = tokens / tps / 3600
    days = gpu_hours / num_gpus / 24 if num_gpus else None
    return TrainingCost(tokens, seq_len, include_mtp, fpt, fpt * tokens, hw.name, precision,
                        peak, basis, fpt * tps / peak, tps, gpu_hours, price_per_hour,
                        gpu_hours * price_per_hour, num_gpus, days)


# -------------------------------------------------------------------- DeepSeek-V3 Table 1
V3_PUBLISHED = {  # DeepSeek-V3 technical report, Table 1 (H800 GPU-hours; $2 per GPU-hour)
    "pretraining_tokens": 14_800_000_000_000, "gpu_hours_per_trillion_tokens": 180_000,
    "num_gpus": 2048, "seq_len": 4096, "price_per_gpu_hour": 2.0,
    "gpu_hours": {"pre-training": 2_664_000, "context extension": 119_000,
                  "post-training": 5_000, "total": 2_788_000},
    "dollars": {"pre-training": 5_328_000, "context extension": 238_000,
                "post-training": 10_000, "total": 5_576_000},
}


def v3_published_table() -> dict[str, Any]:
    """Reproduce DeepSeek-V3's cost table from its inputs, and the MFU those hours imply.

    Pre-training hours are computed: 14.8T tokens at the published 180K H800 GPU-hours per
    trillion tokens. Context extension (119K) and post-training (5K) are published measured
    hours taken as inputs (the report gives no throughput for them). Implied MFU = our
    FLOPs/token (V3 preset, T = 4096) x tokens/s per GPU / the H800 dense peak, at the BF16
    and the FP8 peak, with and without the MTP module's FLOPs.
    """
    p, v3 = V3_PUBLISHED, get_preset("deepseek-v3")
    pre = training_cost(v3, p["pretraining_tokens"], "h800",
                        gpu_hours_per_trillion=p["gpu_hours_per_trillion_tokens"],
                        price_per_hour=p["price_per_gpu_hour"], seq_len=p["seq_len"],
                        num_gpus=p["num_gpus"])
    hours = {"pre-training": pre.gpu_hours,
             "context extension": float(p["gpu_hours"]["context extension"]),
             "post-training": float(p["gpu_hours"]["post-training"])}
    hours["total"] = sum(hours.values())
    dollars = {stage: h * p["price_per_gpu_hour"] for stage, h in hours.items()}
    implied = {}
    for mtp in (False, True):
        for precision in ("bf16", "fp8"):
            c = training_cost(v3, p["pretraining_tokens"], "h800", precision=precision,
                              gpu_hours_per_trillion=p["gpu_hours_per_trillion_tokens"],
                              seq_len=p["seq_len"], include_mtp=mtp)
            implied[f"{precision}{'_with_mtp' if mtp else ''}"] = c.mfu
    return {
        "inputs": {k: p[k] for k in ("pretraining_tokens", "gpu_hours_per_trillion_tokens",
                                     "num_gpus", "seq_len", "price_per_gpu_hour")}
        | {"context_extension_gpu_hours": p["gpu_hours"]["context extension"],
           "post_training_gpu_hours": p["gpu_hours"]["post-training"], "gpu": "h800"},
        "gpu_hours": hours, "dollars": dollars,
        "matches_published": hours == p["gpu_hours"] and dollars == p["dollars"],
        "published": {"gpu_hours": p["gpu_hours"], "dollars": p["dollars"]},
        "pretraining": pre.to_dict(),
        "pretraining_days_on_2048_gpus": pre.wall_clock_days,
        "implied_mfu": implied,
        "mfu_note": "headline: bf16 (dense BF16 peak 989.5 TFLOPS, MTP FLOPs excluded); V3 ran "
                    "GEMMs in FP8 (peak 1979 TFLOPS), so the FP8 figure is the stricter one; "
                    "attention counted over all T keys (no causal halving)",
    }


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
        _check_nonnegative(prompt_tokens=self.prompt_tokens, output_tokens=self.output_tokens,
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
    _check_positive(tokens_per_second=tokens_per_second)
    _check_nonnegative(price_per_hour=price_per_hour)
    return price_per_hour / (tokens_per_second * 3600) * 1e6


# -------------------------------------------------------------------- parsing and checks
def parse_count(text: str | int | float, name: str = "tokens") -> int:
    """``"14.8T"`` -> 14_800_000_000_000; suffixes K, M, B (or G), T; commas, ``_`` and
    ``1e9`` are fine. Negative or unreadable -> ValueError naming ``name``."""
    return int(_parse_decimal(text, name))


def parse_rate(text: str | int | float, name: str = "tokens_per_second") -> float:
    """Like ``parse_count`` but keeps fractions: ``"1.5K"`` -> 1500.0."""
    return float(_parse_decimal(text, name))


def _parse_decimal(text: str | int | float, name: str) -> Decimal:
    s = str(text).strip().replace(",", "").replace("_", "").upper()
    scale = _SUFFIXES.get(s[-1:], 1)
    try:
        value = Decimal(s[:-1] if scale != 1 else s) * scale
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise ValueError(f"{name}: cannot read {text!r}; write a number with an optional "
                         "K, M, B or T suffix, e.g. 14.8T")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {text!r}")
    return value


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name}: must be > 0, got {v}")


def _check_nonnegative(**values: float) -> None:
    for name, v in values.items():
        if not v >= 0:
            raise ValueError(f"{name}: must be >= 0, got {v}")


# -------------------------------------------------------------------- markdown (reports)
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    def align(i: int) -> str:
        return "---:" if rows and isinstance(rows[0][i], int | float) else "---"

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(align(i) for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    """Human form of one figure: ints with commas, big floats in e-notation."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1e12:
        return f"{v:.4g}"
    return f"{v:,.0f}" if v.is_integer() or abs(v) >= 1e4 else f"{v:,.4g}"


def v3_markdown(table: dict[str, Any] | None = None) -> str:
    """DeepSeek-V3 Table 1 as reproduced, then the implied MFU, as markdown."""
    t = table or v3_published_table()
    rows = [(stage, f"{t['gpu_hours'][stage] / 1e3:,.0f}K",
             f"{t['published']['gpu_hours'][stage] / 1e3:,.0f}K",
             f"${t['dollars'][stage] / 1e6:.3f}M") for stage in t["gpu_hours"]]
    mfu = [(k, f"{100 * v:.1f}%") for k, v in t["implied_mfu"].items()]
    return (markdown_table(("stage", "H800 GPU-hours", "published", "at $2/GPU-h"), rows)
            + "\n\n" + markdown_table(("implied MFU (peak, FLOPs)", "value"), mfu))


def training_markdown(costs: Sequence[TrainingCost]) -> str:
    """One row per ``TrainingCost``."""
    rows = [(f"{c.tokens / 1e9:,.4g}B", c.hardware, c.precision, f"{100 * c.mfu:.1f}%",
             f"{c.tokens_per_second_per_gpu:,.0f}", f"{c.flops_per_token:.3e}",
             f"{c.gpu_hours:,.1f}", f"${c.dollars:,.2f}") for c in costs]
    return markdown_table(("tokens", "hardware", "precision", "MFU", "tok/s/GPU", "FLOPs/token",
                           "GPU-hours", "cost"), rows)


def api_markdown(workload: Workload, providers: Sequence[str] = tuple(PROVIDERS)) -> str:
    """Cost of ``workload`` at each provider's list prices."""
    rows = []
    for name in providers:
        p, b = PROVIDERS[name], api_cost_breakdown(workload, name)
        rows.append((name, f"${p.cache_hit:g} / ${p.cache_miss:g} / ${p.output:g}",
                     f"${b['total']:,.4f}", p.date))
    return markdown_table(("provider", "per 1M: hit / miss / output", "cost", "price as of"),
                          rows)


# -------------------------------------------------------------------- command line
def _arg(parse: Any, name: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text, name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e
    return convert


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoseek cost", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="GPU-hours and dollars to train a model on N tokens")
    src = t.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME", help="a built-in config, e.g. deepseek-v3")
    src.add_argument("--model", metavar="DIR", help="a model directory (reads DIR/config.json)")
    t.add_argument("--tokens", type=_arg(parse_count, "--tokens"), required=True,
                   help="training tokens, e.g. 14.8T")
    t.add_argument("--gpu", default="h800", help=f"{', '.join(HARDWARE)} or cpu (measured)")
    rate = t.add_mutually_exclusive_group(required=True)
    rate.add_argument("--mfu", type=float, help="model FLOPs utilisation, a fraction of peak")
    rate.add_argument("--tokens-per-second", type=_arg(parse_rate, "--tokens-per-second"),
                      help="measured training throughput per GPU")
    rate.add_argument("--gpu-hours-per-trillion", type=_arg(parse_rate, "--gpu-hours-per-trillion"),
                      help="measured GPU-hours per 1T tokens (DeepSeek-V3: 180K)")
    t.add_argument("--price", type=float, default=2.0, help="USD per GPU-hour (default 2)")
    t.add_argument("--seq-len", type=int, default=4096, help="sequence length (default 4096)")
    t.add_argument("--precision", help="peak to measure MFU against: bf16 (default), fp8, fp32")
    t.add_argument("--mtp", action="store_true", help="count the MTP modules' FLOPs too")
    t.add_argument("--num-gpus", type=int, help="GPUs in parallel, for wall-clock days")
    sub.add_parser("v3", help="DeepSeek-V3's published cost table, reproduced, and its MFU")
    a = sub.add_parser("api", help="what a workload costs at API list prices")
    a.add_argument("--prompt-tokens", type=_arg(parse_count, "--prompt-tokens"), required=True,
                   help="prompt tokens per request")
    a.add_argument("--output-tokens", type=_arg(parse_count, "--output-tokens"), required=True,
                   help="output tokens per request (reasoning included)")
    a.add_argument("--cache-hit", type=float, default=0.0, help="fraction of prompt cached")
    a.add_argument("--requests", type=_arg(parse_count, "--requests"), default=1)
    a.add_argument("--provider", default="all", help=f"{', '.join(PROVIDERS)} or all")
    d = sub.add_parser("deploy", help="your own deployment's cost per 1M tokens")
    d.add_argument("--tokens-per-second", type=_arg(parse_rate, "--tokens-per-second"),
                   required=True, help="measured tokens/s of the whole machine")
    d.add_argument("--price-per-hour", type=float, required=True, help="machine USD per hour")
    sub.add_parser("hardware", help="peak FLOPS table (cpu: a quick matmul benchmark)")
    for s in sub.choices.values():
        s.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _run_train(args: argparse.Namespace) -> dict[str, Any]:
    from nanoseek.info import load_config

    config = load_config(args.preset, args.model)
    c = training_cost(config, args.tokens, args.gpu, mfu=args.mfu,
                      tokens_per_second=args.tokens_per_second,
                      gpu_hours_per_trillion=args.gpu_hours_per_trillion,
                      price_per_hour=args.price, seq_len=args.seq_len, precision=args.precision,
                      include_mtp=args.mtp, num_gpus=args.num_gpus)
    return {"model": args.preset or args.model} | c.to_dict()


def _run_api(args: argparse.Namespace) -> dict[str, Any]:
    w = Workload(args.prompt_tokens, args.output_tokens, args.cache_hit, args.requests)
    names = list(PROVIDERS) if args.provider == "all" else [args.provider]
    for name in names:
        get_provider(name)  # ValueError for an unknown name
    return {"workload": asdict(w), "usd_per_million_tokens": True,
            "providers": {n: asdict(PROVIDERS[n]) | {"cost": api_cost_breakdown(w, n)}
                          for n in names}}


def _run_deploy(args: argparse.Namespace) -> dict[str, Any]:
    per_m = deployment_cost_per_million(args.tokens_per_second, args.price_per_hour)
    return {"tokens_per_second": args.tokens_per_second, "price_per_hour": args.price_per_hour,
            "tokens_per_hour": args.tokens_per_second * 3600, "dollars_per_million_tokens": per_m,
            "api_output_price_per_million": {n: p.output for n, p in PROVIDERS.items()}}


def _run_hardware(args: argparse.Namespace) -> dict[str, Any]:
    return {h.name: asdict(h) for h in [*HARDWARE.values(), get_hardware("cpu")]}


def _print(command: str, out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if command == "v3":
        table = Table("stage", "H800 GPU-hours", "published", "dollars at $2/GPU-h",
                      title="DeepSeek-V3 training cost (Table 1), reproduced")
        for stage, hours in out["gpu_hours"].items():
            table.add_row(stage, f"{hours:,.0f}", f"{out['published']['gpu_hours'][stage]:,}",
                          f"${out['dollars'][stage]:,.0f}")
        console.print(table)
        pre = out["pretraining"]
        console.print(f"pre-training = {out['inputs']['pretraining_tokens'] / TRILLION:g}T tokens"
                      f" x {out['inputs']['gpu_hours_per_trillion_tokens']:,} GPU-h per 1T = "
                      f"{pre['tokens_per_second_per_gpu']:,.1f} tokens/s per H800; "
                      f"{out['pretraining_days_on_2048_gpus']:.1f} days on 2048 GPUs")
        console.print(f"FLOPs/token (V3, T=4096): {pre['flops_per_token']:.4g}; implied MFU: "
                      + ", ".join(f"{k} {100 * v:.1f}%" for k, v in out["implied_mfu"].items()))
        console.print(f"match: {out['matches_published']}  ({out['mfu_note']})")
        return
    if command == "api":
        table = Table("provider", "$/1M hit / miss / out", "hit $", "miss $", "output $",
                      "total $", title="API cost of the workload (list prices)")
        for name, p in out["providers"].items():
            c = p["cost"]
            table.add_row(name, f"{p['cache_hit']:g} / {p['cache_miss']:g} / {p['output']:g}",
                          *(_fmt(c[k]) for k in ("cache_hit", "cache_miss", "output", "total")))
        console.print(table)
        console.print(f"workload: {out['workload']}")
        for name, p in out["providers"].items():
            console.print(f"  {name}: {p['model']}; {p['date']}; {p['source']}")
        return
    if command == "hardware":
        table = Table("name", "label", "dense peak TFLOPS", "memory GB", "TB/s",
                      title="hardware (dense peaks, no 2:4 sparsity)")
        for h in out.values():
            peaks = ", ".join(f"{k} {v:g}" for k, v in h["peak_tflops"].items())
            table.add_row(h["name"], h["label"], peaks, str(h["memory_gb"] or "-"),
                          str(h["bandwidth_tbs"] or "-"))
        console.print(table)
        for h in out.values():
            console.print(f"  {h['name']}: {h['source']}")
        return
    table = Table(show_header=False, title=f"nanoseek cost {command}")
    for key, value in out.items():
        for sub, v in (value.items() if isinstance(value, dict) else [("", value)]):
            table.add_row(f"{key} {sub}".strip(), "-" if v is None else _fmt(v))
    console.print(table)


_RUN = {"train": _run_train, "v3": lambda args: v3_published_table(), "api": _run_api,
        "deploy": _run_deploy, "hardware": _run_hardware}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0. Bad input exits with code 2 (``SystemExit``) and a message."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        out = _RUN[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(f"{args.command}: {e}")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print(args.command, out)
    return 0
