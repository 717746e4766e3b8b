"""``nanoseek serve``: load a model directory and serve it with the OpenAI/DeepSeek API.

    nanoseek serve --model out/r1-tiny --port 8000 --api-key sk-local --budget 5
    nanoseek serve --model out/chat --reasoning off --price nanoseek=0.07,0.27,1.10

The model is loaded with ``nanoseek.infer.LLM`` (engine options: block size, KV cache size,
context, batch limits, MTP speculation), warmed up with one short request, and served by
uvicorn until SIGINT/SIGTERM; on shutdown, requests in flight get ``--shutdown-timeout``
seconds to finish, then are aborted. Bad flags or a bad model directory exit with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from nanoseek.serve.api import ServeConfig, create_app, log
from nanoseek.serve.ledger import default_prices, parse_price


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoseek serve", description=(
        "Serve a model directory with an OpenAI/DeepSeek-compatible API."))
    p.add_argument("--model", required=True, help="HF-format model directory (with tokenizer)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", help="name clients use (default: the directory's)")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="accepted key (repeat for several; none = open server)")
    p.add_argument("--reasoning", choices=("auto", "on", "off"), default="auto",
                   help="thinking mode: auto = on when the tokenizer has <think> tokens")
    p.add_argument("--ledger", default="nanoseek_usage.sqlite",
                   help="SQLite usage ledger (default: %(default)s)")
    p.add_argument("--no-ledger", action="store_true", help="record no usage")
    p.add_argument("--budget", type=float, metavar="USD", help="spend cap per API key (402)")
    p.add_argument("--price", action="append", default=[], metavar="NAME=HIT,MISS,OUT",
                   help="USD per 1M tokens for model NAME (or NAME=PROVIDER, e.g. deepseek-r1)")
    p.add_argument("--rate-limit", type=float, metavar="RPM", help="requests per minute per key")
    p.add_argument("--max-pending", type=int, default=512,
                   help="requests in flight before 503 (default: %(default)s)")
    p.add_argument("--keepalive", type=float, default=5.0, help="seconds between SSE keep-alives")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: config.json's)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cpu)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--kv-cache-mib", type=int, help="KV cache size in MiB (engine default)")
    p.add_argument("--max-model-len", type=int)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--speculative", type=int, default=0, choices=(0, 1),
                   help="MTP draft tokens per step (DeepSeek models with an MTP module)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds to let in-flight requests finish on shutdown")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def _config(args: argparse.Namespace) -> ServeConfig:
    prices = default_prices()
    prices.update(parse_price(spec) for spec in args.price)
    if args.max_pending < 1:
        raise ValueError(f"--max-pending: must be >= 1, got {args.max_pending}")
    if not args.keepalive > 0:
        raise ValueError(f"--keepalive: must be > 0 seconds, got {args.keepalive}")
    return ServeConfig(
        served_model_name=args.served_model_name or Path(args.model).resolve().name,
        api_keys=args.api_key, reasoning=args.reasoning,
        ledger_path=None if args.no_ledger else args.ledger, budget_usd=args.budget,
        prices=prices, rate_limit=args.rate_limit, max_pending=args.max_pending,
        keepalive_s=args.keepalive)


def load_engine(args: argparse.Namespace) -> tuple[Any, Any]:
    """(engine, tokenizer) for ``args.model``, warmed up with one short request."""
    from nanoseek.infer import LLM, SamplingParams

    engine_kwargs = {"block_size": args.block_size, "max_model_len": args.max_model_len,
                     "max_num_seqs": args.max_num_seqs, "num_speculative_tokens": args.speculative,
                     "max_num_batched_tokens": args.max_num_batched_tokens}
    if args.kv_cache_mib:
        engine_kwargs["kv_cache_memory"] = args.kv_cache_mib * 2**20
    llm = LLM(args.model, dtype=args.dtype, device=args.device, **engine_kwargs)
    if llm.tokenizer is None:
        raise ValueError(f"--model: {args.model} has no tokenizer.json; the API needs one")
    engine = llm.engine
    engine.add_request("warmup", [llm.tokenizer.bos_id or 0], SamplingParams(max_tokens=2))
    while engine.has_unfinished():
        engine.step()
    return engine, llm.tokenizer


def main(argv: list[str] | None = None) -> int:
    """``nanoseek serve``: load the model, then serve until SIGINT/SIGTERM."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = _config(args)
        engine, tokenizer = load_engine(args)
        app = create_app(engine, tokenizer, config)
    except (ValueError, OSError) as error:
        print(f"nanoseek serve: {error}", file=sys.stderr)
        return 2
    import uvicorn

    log.info("serving %s on http://%s:%d (thinking: %s)", config.served_model_name, args.host,
             args.port, app.state.server.info.thinking_available)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.shutdown_timeout)
    return 0
