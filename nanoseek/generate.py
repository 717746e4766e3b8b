"""``nanoseek generate``: complete one prompt from a model directory, streaming to stdout.

    nanoseek generate --model out/sft --prompt "The capital of France is" --max-tokens 32
    nanoseek generate --model out/r1 --prompt "What is 7 * 8?" --chat --json

Text streams to stdout as it is generated; a stats line (tokens, tokens/s, cached prompt
tokens, finish reason) goes to stderr. ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

DTYPES = ("float32", "bfloat16", "float16")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``generate`` and ``chat``: model, dtype, threads, sampling."""
    parser.add_argument("--model", required=True, help="HF-format model directory")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="weights dtype (default: config.json's torch_dtype, else float32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--max-tokens", type=int, default=256, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.6, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--speculative", type=int, default=0, choices=(0, 1),
                        help="MTP draft tokens per step (DeepSeek models with MTP)")


def load_llm(args: argparse.Namespace):
    """An ``LLM`` for ``args.model`` (with its tokenizer) per the shared options."""
    import torch

    from nanoseek.infer import LLM

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        llm = LLM(args.model, dtype=args.dtype, num_speculative_tokens=args.speculative)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"nanoseek: cannot load {args.model}: {error}") from None
    if llm.tokenizer is None:
        raise SystemExit(f"nanoseek: {args.model} has no tokenizer.json; save a tokenizer "
                         "into the model directory")
    return llm


def sampling_params(args: argparse.Namespace):
    from nanoseek.infer import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                          seed=args.seed, max_tokens=args.max_tokens)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user message in the chat template")
    parser.add_argument("--no-thinking", action="store_true",
                        help="with --chat: do not open a <think> block")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    llm = load_llm(args)
    try:
        params = sampling_params(args)
        prompt = args.prompt
        if args.chat:
            prompt = llm.chat_prompt([{"role": "user", "content": args.prompt}],
                                     thinking=not args.no_thinking)
        start = time.perf_counter()
        first = None
        for out in llm.stream(prompt, params):
            first = first or time.perf_counter()
            if not args.json:
                sys.stdout.write(out.outputs[0].delta_text)
                sys.stdout.flush()
    except ValueError as error:
        print(f"nanoseek generate: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    done = out.outputs[0]
    result = {
        "text": done.text, "token_ids": done.token_ids, "finish_reason": done.finish_reason,
        "prompt_tokens": out.prompt_tokens, "completion_tokens": len(done.token_ids),
        "cached_tokens": out.num_cached_tokens, "seconds": round(seconds, 4),
        "time_to_first_token": round((first or start) - start, 4),
        "tokens_per_second": round(len(done.token_ids) / seconds, 2) if seconds else None,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print()
        print(f"[{result['completion_tokens']} tokens, {result['tokens_per_second']} tok/s, "
              f"TTFT {result['time_to_first_token']:.3f}s, prompt {out.prompt_tokens} tokens, "
              f"finish: {done.finish_reason}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
