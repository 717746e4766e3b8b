"""The ``nanoseek`` command: each subcommand calls one stage's ``main(argv)``."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("nanoseek.info", "architecture, parameter counts, memory and FLOPs of a model"),
    "cost": ("nanoseek.costmodel", "training GPU-hours and dollars, API and deployment prices"),
    "tokenizer": ("nanoseek.tokenizer", "train or inspect a byte-level BPE tokenizer"),
    "generate": ("nanoseek.generate", "complete a prompt with a model (streaming)"),
    "chat": ("nanoseek.chat", "interactive terminal chat with a model"),
    "serve": ("nanoseek.serve.main", "OpenAI/DeepSeek-compatible API server over the engine"),
    "usage": ("nanoseek.serve.usage", "API usage and cost per key, vs other providers' prices"),
    "data": ("nanoseek.data.prepare", "tokenize a corpus into token shards, inspect a data dir"),
    "pretrain": ("nanoseek.train.pretrain", "pretrain a DeepSeek-V3-style model (TOML config)"),
    "eval": ("nanoseek.eval.run", "pass@1 / pass@k / maj@k / greedy accuracy on a verifiable task"),
    "sample": ("nanoseek.rl.sample", "rejection sampling: keep verified traces as SFT JSONL"),
    "grpo": ("nanoseek.rl.grpo", "GRPO reinforcement learning with rule rewards (TOML config)"),
    "sft": ("nanoseek.train.sft", "supervised fine-tuning on chat JSONL (packed, TOML config)"),
    "distill": ("nanoseek.distill.run", "distill a teacher into a dense Llama/Qwen2 student"),
    "speedrun": ("nanoseek.speedrun.run", "every stage at toy scale, resumable, to report.md"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: nanoseek COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `nanoseek COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv[0]`` to its stage; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"nanoseek: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
