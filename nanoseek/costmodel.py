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

This module is the command line and gathers the public names; the models are in
``nanoseek.costmodel_training`` (hardware, GPU-hours, V3's table), ``nanoseek.costmodel_serving``
(API prices, deployment) and ``nanoseek.costmodel_numbers`` (parsing, checks, markdown).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from nanoseek.costmodel_numbers import format_number, markdown_table, parse_count, parse_rate
from nanoseek.costmodel_serving import (
    PROVIDERS,
    ApiPrice,
    Workload,
    api_cost,
    api_cost_breakdown,
    api_markdown,
    deployment_cost_per_million,
    get_provider,
)
from nanoseek.costmodel_training import (
    CPU_NOTE,
    HARDWARE,
    TRILLION,
    V3_PUBLISHED,
    Hardware,
    TrainingCost,
    get_hardware,
    training_cost,
    training_markdown,
    v3_markdown,
    v3_published_table,
)

__all__ = [
    "CPU_NOTE",
    "HARDWARE",
    "PROVIDERS",
    "TRILLION",
    "V3_PUBLISHED",
    "ApiPrice",
    "Hardware",
    "TrainingCost",
    "Workload",
    "api_cost",
    "api_cost_breakdown",
    "api_markdown",
    "deployment_cost_per_million",
    "get_hardware",
    "get_provider",
    "main",
    "markdown_table",
    "parse_count",
    "parse_rate",
    "training_cost",
    "training_markdown",
    "v3_markdown",
    "v3_published_table",
]


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
                          *(format_number(c[k])
                            for k in ("cache_hit", "cache_miss", "output", "total")))
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
            table.add_row(f"{key} {sub}".strip(), "-" if v is None else format_number(v))
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
