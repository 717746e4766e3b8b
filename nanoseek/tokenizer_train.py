"""Training a byte-level BPE (``train_tokenizer``) and reading its corpus files.

GPT-2/DeepSeek-style byte-level BPE (digits split into groups of at most three, as Llama-3 and
DeepSeek-V3 do) with DeepSeek's special tokens and the R1 chat template from
``nanoseek.chat_template``. Corpus files: ``.txt``/``.md`` give one document per
blank-line-separated paragraph, ``.jsonl`` one per line (``iter_documents``, which
``nanoseek.data.prepare`` reads text files with too).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as BackendTokenizer

from nanoseek.chat_template import (
    ASSISTANT_TOKEN,
    BOS_TOKEN,
    CHAT_TEMPLATE,
    EOS_TOKEN,
    PAD_TOKEN,
    THINK_END,
    THINK_START,
    USER_TOKEN,
)
from nanoseek.jsonl import iter_jsonl
from nanoseek.tokenizer_core import Tokenizer

SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)
"""Added as special tokens at ids 0..4 (BOS 0 and EOS 1, as in DeepSeek's vocabulary)."""
THINK_TOKENS = (THINK_START, THINK_END)
"""Added as ordinary (non-special) added tokens, as DeepSeek-R1 does, so decoding with
``skip_special_tokens=True`` keeps the reasoning tags visible to parsers."""
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS) + len(THINK_TOKENS)
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl",)
# The GPT-4 / Llama-3 split: contractions, letter runs with one leading non-letter, digit
# groups of 1-3, punctuation runs, newlines, other whitespace. Bytes are mapped afterwards.
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def train_tokenizer(
    files: Sequence[str | os.PathLike[str]],
    vocab_size: int,
    text_field: str = "text",
    min_frequency: int = 2,
    progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE with DeepSeek's special tokens and the R1 chat template.

    ``files`` are files or directories (searched recursively for ``.txt``/``.md``/``.jsonl``).
    Text files give one document per blank-line-separated paragraph; ``.jsonl`` files one per
    line, from the field ``text_field``. ``vocab_size`` counts every id (bytes, merges, added
    tokens); a small corpus may stop short of it. Deterministic for the same input.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the {BYTE_ALPHABET_SIZE} byte tokens and "
            f"{len(SPECIAL_TOKENS) + len(THINK_TOKENS)} special tokens need {MIN_VOCAB_SIZE}"
        )
    paths = collect_files(files)
    backend = _new_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(THINK_TOKENS),
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    with _CorpusFeed(paths, text_field, progress) as feed:
        backend.train_from_iterator(feed, trainer=trainer)
    if feed.characters == 0:
        raise ValueError(f"no text found in {[str(p) for p in paths]}: the files are empty")
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN}:0 $A:0",
        pair=f"{BOS_TOKEN}:0 $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, backend.token_to_id(BOS_TOKEN))],
    )
    return Tokenizer(backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
                     chat_template=CHAT_TEMPLATE)


def collect_files(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into a sorted, de-duplicated list of corpus files."""
    if not inputs:
        raise ValueError("no input files given")
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*")
                           if p.is_file() and p.suffix in TEXT_SUFFIXES + JSONL_SUFFIXES)
            if not found:
                raise ValueError(f"directory {item} has no .txt, .md or .jsonl files")
            paths += found
        elif item.is_file():
            if item.suffix not in TEXT_SUFFIXES + JSONL_SUFFIXES:
                raise ValueError(f"{item}: unsupported file type {item.suffix!r}; "
                                 "use .txt, .md or .jsonl")
            paths.append(item)
        else:
            raise ValueError(f"input {item} does not exist")
    return list(dict.fromkeys(paths))


def iter_documents(paths: Iterable[Path], text_field: str = "text") -> Iterator[str]:
    """Yield documents: text paragraphs (blank-line separated) or jsonl ``text_field`` values."""
    for path in paths:
        if path.suffix in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, text_field)
        else:
            yield from _text_documents(path)


def _text_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with path.open(encoding="utf-8", newline="") as handle:
        try:
            for line in handle:
                if line.strip():
                    lines.append(line)
                elif lines:
                    yield "".join(lines)
                    lines = []
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text: {error.reason}") from error
    if lines:
        yield "".join(lines)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    for number, record in iter_jsonl(path):
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise ValueError(f"{path}:{number}: no string field {text_field!r} "
                             "(set --text-field)")
        yield record[text_field]


def _new_backend() -> BackendTokenizer:
    backend = BackendTokenizer(models.BPE(byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    return backend


class _CorpusFeed:
    """The corpus documents for the trainer, counting characters, with an optional rich bar.

    The bar runs over corpus bytes (rate, ETA), then spins while the merges are learned.
    """

    def __init__(self, paths: Sequence[Path], text_field: str, progress: bool) -> None:
        self.paths, self.text_field = paths, text_field
        self.total = sum(path.stat().st_size for path in paths)
        self.characters = 0
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not progress,
        )
        self.task = self.bar.add_task("reading corpus", total=self.total)

    def __enter__(self) -> _CorpusFeed:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __iter__(self) -> Iterator[str]:
        for document in iter_documents(self.paths, self.text_field):
            self.characters += len(document)
            self.bar.advance(self.task, len(document.encode("utf-8")))
            yield document
        self.bar.update(self.task, completed=self.total, description="learning merges")
