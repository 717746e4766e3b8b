"""The command line every training stage shares (``pretrain``, ``sft``, ``grpo``, ``distill``).

``--config FILE.toml`` plus ``--section.key value`` overrides (``load_config``), ``--resume``,
``--print-config`` and ``--quiet``. A bad config or input is one line on stderr and exit code
2 before any work; a non-finite loss stops the run with exit code 1 (its last checkpoint is
kept); the process group is always torn down.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nanoseek.checkpoint import CheckpointError
from nanoseek.train.config import load_config, to_dict
from nanoseek.train.loop import NonFiniteLossError

USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError)


def stage_parser(prog: str, description: str, sections: str, example: str,
                 resume_checkpoint: bool = True) -> argparse.ArgumentParser:
    """The shared parser. ``sections`` lists the TOML sections, ``example`` an override.
    ``resume_checkpoint``: ``--resume [CHECKPOINT]`` (default the latest); otherwise a flag."""
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=f"Other arguments are overrides: --section.key value (e.g. {example}).")
    p.add_argument("--config", help=f"TOML file (sections {sections})")
    if resume_checkpoint:
        p.add_argument("--resume", nargs="?", const="latest", default=None,
                       metavar="CHECKPOINT",
                       help="continue the latest checkpoint of train.out_dir (or CHECKPOINT)")
    else:
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted run in train.out_dir")
    p.add_argument("--print-config", action="store_true", help="print the resolved config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run_stage(parser: argparse.ArgumentParser, config_cls: type, run: Callable[..., Any],
              argv: Sequence[str] | None, done: Callable[[Any], str] | None = None) -> int:
    """Parse ``argv``, resolve the config, call ``run(cfg, info, args.resume)`` under the
    distributed set-up; print ``done(result)`` on the main rank. Returns the exit code."""
    from nanoseek.distributed import destroy_distributed, init_distributed

    prog = parser.prog
    args, rest = parser.parse_known_args(argv)
    try:
        cfg = load_config(config_cls, args.config, rest)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if args.quiet:
        cfg.train.progress = False
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    try:
        info = init_distributed(cfg.train.device)
        result = run(cfg, info, args.resume)
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{prog}: stopped: {e}", file=sys.stderr)
        return 1
    finally:
        destroy_distributed()
    if done is not None and info.is_main:
        print(f"{prog}: {done(result)}")
    return 0
