"""Byte-level BPE tokenizer: train, load and save HF ``tokenizer.json`` dirs, render R1 chats.

``Tokenizer`` wraps a Hugging Face ``tokenizers.Tokenizer`` plus the few fields of
``tokenizer_config.json`` nanoseek uses (BOS/EOS/PAD tokens, the chat template), so any HF
``tokenizer.json`` loads, and what nanoseek trains and saves opens in ``transformers``
(``AutoTokenizer``) with the same ids, chat template included. ``train_tokenizer`` trains a
GPT-2/DeepSeek-style byte-level BPE (digits split into groups of at most three, as Llama-3 and
DeepSeek-V3 do) with DeepSeek's special tokens and the R1 chat template from
``nanoseek.chat_template``.

This module gathers the public names and holds the command line; the code lives in
``nanoseek.tokenizer_core`` (``Tokenizer``: load, save, encode, chats) and
``nanoseek.tokenizer_train`` (``train_tokenizer`` and the corpus readers).

Command line (``nanoseek tokenizer ...`` calls ``main``)::

    nanoseek tokenizer train --input corpus/ --vocab-size 4096 --out tok/
    nanoseek tokenizer encode --tokenizer tok/ "Hello world"
    nanoseek tokenizer info --tokenizer tok/
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from nanoseek.tokenizer_core import (
    CONFIG_KEYS,
    DEFAULT_MODEL_MAX_LENGTH,
    ChatEncoding,
    Tokenizer,
)
from nanoseek.tokenizer_train import (
    BYTE_ALPHABET_SIZE,
    JSONL_SUFFIXES,
    MIN_VOCAB_SIZE,
    PRETOKENIZE_REGEX,
    SPECIAL_TOKENS,
    TEXT_SUFFIXES,
    THINK_TOKENS,
    collect_files,
    iter_documents,
    train_tokenizer,
)

__all__ = [
    "BYTE_ALPHABET_SIZE",
    "CONFIG_KEYS",
    "DEFAULT_MODEL_MAX_LENGTH",
    "JSONL_SUFFIXES",
    "MIN_VOCAB_SIZE",
    "PRETOKENIZE_REGEX",
    "SPECIAL_TOKENS",
    "TEXT_SUFFIXES",
    "THINK_TOKENS",
    "ChatEncoding",
    "Tokenizer",
    "collect_files",
    "iter_documents",
    "main",
    "train_tokenizer",
]


def main(argv: Sequence[str] | None = None) -> int:
    """``nanoseek tokenizer {train,encode,info}``; returns 0.

    Bad input exits with code 2 (``SystemExit``) and a message on stderr.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek tokenizer", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a byte-level BPE on text/jsonl files")
    train.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_DIR",
                       help=".txt/.md/.jsonl files, or directories searched for them")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N",
                       help=f"total ids, special tokens included (at least {MIN_VOCAB_SIZE})")
    train.add_argument("--out", required=True, metavar="DIR", help="directory to save into")
    train.add_argument("--text-field", default="text", help="jsonl field holding the text")
    train.add_argument("--min-frequency", type=int, default=2,
                       help="merge only pairs seen at least this often")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_run_train)
    encode = commands.add_parser("encode", help="print the token ids of some text")
    encode.add_argument("--tokenizer", required=True, metavar="DIR_OR_JSON")
    encode.add_argument("--add-bos", action="store_true", help="prepend the BOS token")
    encode.add_argument("text", nargs="*", help="text to encode (default: read stdin)")
    encode.set_defaults(run=_run_encode)
    info = commands.add_parser("info", help="print a tokenizer's vocabulary size and specials")
    info.add_argument("--tokenizer", required=True, metavar="DIR_OR_JSON")
    info.set_defaults(run=_run_info)
    return parser


def _run_train(args: argparse.Namespace) -> int:
    show_progress = not args.quiet and sys.stderr.isatty()
    tokenizer = train_tokenizer(args.input, args.vocab_size, text_field=args.text_field,
                                min_frequency=args.min_frequency, progress=show_progress)
    out = tokenizer.save_pretrained(args.out)
    if not args.quiet:
        print(f"saved {tokenizer!r} to {out} (fingerprint {tokenizer.fingerprint()[:16]})")
    return 0


def _run_encode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    text = " ".join(args.text) if args.text else sys.stdin.read()
    print(" ".join(map(str, tokenizer.encode(text, add_bos=args.add_bos))))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    info = {
        "vocab_size": tokenizer.vocab_size,
        "bos": [tokenizer.bos_token, tokenizer.bos_id],
        "eos": [tokenizer.eos_token, tokenizer.eos_id],
        "pad": [tokenizer.pad_token, tokenizer.pad_id],
        "think": [tokenizer.think_start_id, tokenizer.think_end_id],
        "has_chat_template": tokenizer.chat_template is not None,
        "fingerprint": tokenizer.fingerprint(),
    }
    print(json.dumps(info, ensure_ascii=False, indent=2))
    return 0
