"""Corpus → memory-mapped token shards with a manifest (``nanoseek data prepare``).

Inputs are files or folders (searched recursively, hidden entries skipped):

- ``.txt`` / ``.md``: one document per blank-line-separated paragraph (as the tokenizer trainer
  reads them: ``nanoseek.tokenizer.iter_documents``);
- ``.jsonl``: one document per line, from the string field ``text_field``;
- ``.parquet``: one document per row of the string column ``text_field``;
- ``.arrow``: Arrow IPC stream (or file) data, e.g. a dataset written by HF ``datasets``'
  ``save_to_disk`` (``data-00000-of-00001.arrow`` + ``dataset_info.json``/``state.json``); pass
  the folder. A ``DatasetDict`` folder holds every split's files: pass ``folder/train`` for one.

Empty documents (``""`` or null) are skipped. Each document is stored as ``[BOS] + ids``. Output
folder (written under a temporary name and renamed, so it is complete or absent)::

    out/manifest.json     sources, tokenizer fingerprint, dtype, splits, shards, counts
    out/train-00000.bin   token ids of whole documents back to back (little-endian
                          uint16 when vocab_size <= 65536, else uint32: manifest "dtype")
    out/train-00000.idx   int64 document start offsets into the .bin, plus its length
    out/val-00000.bin/.idx   the validation split, same layout

Read a shard with ``np.memmap(path, dtype="<u2", mode="r")`` (or documents by index with
``nanoseek.data.loader.Documents``); documents never straddle shards. The split is by document
and depends only on the position ``i`` of the (non-empty) document in the corpus (files in
sorted order, then ``extra_documents``): it goes to validation when
``ceil((i + 1) * f) > ceil(i * f)`` for ``f = val_fraction``, which sends exactly
``ceil(n * f)`` documents, the first one included, to validation (exact duplicates may land in
both splits). Tokenizing runs in ``workers`` processes (Parquet row groups and Arrow record
batches are read there; text and JSONL files are read here and sent in chunks of documents);
results are written in input order, so the shards are byte-identical whatever the worker count.

This module is the stage (``prepare``) and its command line; reading the inputs is in
``nanoseek.data.sources``, tokenizing and writing the shards in ``nanoseek.data.shards``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nanoseek.data.manifest import (
    MANIFEST_NAME,
    Manifest,
    SplitInfo,
    check_tokenizer,
    load_manifest,
    token_dtype,
)
from nanoseek.data.shards import tokenize_all, write_corpus
from nanoseek.data.sources import (
    TEXT_UNIT_BYTES,
    Source,
    collect_sources,
    plan_units,
    read_units,
)
from nanoseek.tokenizer import Tokenizer

DEFAULT_SHARD_TOKENS = 2**26
"""Tokens per shard (128 MiB of uint16); a document longer than this gets a shard of its own."""
EXTRA_SOURCE = "<extra_documents>"
__all__ = ["Manifest", "Source", "check_tokenizer", "collect_sources", "load_manifest", "main",
           "prepare", "token_dtype"]


# ---- the stage ------------------------------------------------------------------------------


def prepare(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    tokenizer: Tokenizer | str | os.PathLike[str],
    text_field: str = "text",
    val_fraction: float = 0.01,
    workers: int = 1,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    extra_documents: Iterable[str] | None = None,
    progress: bool = False,
) -> Manifest:
    """Tokenize ``inputs`` (+ ``extra_documents``) into token shards in ``out_dir``.

    ``tokenizer`` is a ``Tokenizer`` or its folder (recorded in the manifest). ``out_dir`` must
    be new, empty, or a previous data folder (which is replaced whole at the end). Bad input
    raises ``ValueError`` naming the file (and line or column); nothing is left behind.
    """
    tokenizer, tokenizer_path = _resolve_tokenizer(tokenizer)
    _check_arguments(tokenizer, val_fraction, workers, shard_tokens)
    if not inputs and extra_documents is None:
        raise ValueError("no inputs: give --input files or folders (or extra_documents)")
    sources = collect_sources(inputs) if inputs else []
    planned = plan_units(sources, text_field)
    total: int | None = sum(unit.size for unit in planned)
    estimate = sum(-(-unit.size // TEXT_UNIT_BYTES) if unit.kind in ("text", "jsonl") else 1
                   for unit in planned)
    if extra_documents is not None:  # streamed from the caller: size unknown up front
        sources.append(Source(Path(EXTRA_SOURCE), "extra"))
        total, estimate = None, workers
    units = read_units(planned, text_field, len(sources) - 1, extra_documents)
    workers = max(1, min(workers, estimate))
    out = Path(out_dir)
    temp = _make_temp_dir(out)
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        with _progress(progress) as bar:
            task = bar.add_task("tokenizing", total=total, tokens=0)
            results = tokenize_all(units, workers, tokenizer, text_field, dtype)
            splits, counts = write_corpus(results, temp, dtype, val_fraction, shard_tokens,
                                           bar, task)
        _check_not_empty(splits, sources)
        manifest = Manifest(
            dtype=dtype.name, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id,
            tokenizer_fingerprint=tokenizer.fingerprint(), tokenizer_path=tokenizer_path,
            text_field=text_field, val_fraction=val_fraction, shard_tokens=shard_tokens,
            sources=tuple(_source_record(s, *counts.get(i, (0, 0)))
                          for i, s in enumerate(sources)),
            splits=splits, directory=out,
        )
        manifest.save(temp)
        _replace_dir(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return manifest


def _source_record(source: Source, documents: int, tokens: int) -> dict[str, Any]:
    record: dict[str, Any] = {"path": str(source.path), "kind": source.kind}
    if source.kind != "extra":
        stat = source.path.stat()
        record.update(bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return {**record, "documents": documents, "tokens": tokens}


def _check_not_empty(splits: dict[str, SplitInfo], sources: list[Source]) -> None:
    documents = sum(split.documents for split in splits.values())
    if documents == 0:
        raise ValueError(f"no documents found in {[str(s.path) for s in sources]}: "
                         "the inputs are empty")
    if splits["train"].documents == 0:
        raise ValueError(f"all {documents} documents went to the validation split: "
                         "add documents or lower --val-fraction")


def _resolve_tokenizer(tokenizer: Tokenizer | str | os.PathLike[str]
                       ) -> tuple[Tokenizer, str | None]:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer, None
    return Tokenizer.from_pretrained(tokenizer), str(tokenizer)


def _check_arguments(tokenizer: Tokenizer, val_fraction: float, workers: int,
                     shard_tokens: int) -> None:
    if tokenizer.bos_id is None:
        raise ValueError("the tokenizer has no bos_token: documents must start with BOS "
                         "(set bos_token in tokenizer_config.json)")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction} must be in [0, 1)")
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens={shard_tokens} must be at least 1")


def _make_temp_dir(out: Path) -> Path:
    """A fresh sibling folder of ``out`` to write into; checks ``out`` may be replaced."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ValueError(f"output folder {out} is not empty and holds no {MANIFEST_NAME}; "
                         "choose a new or empty folder (a previous data folder is replaced)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as error:
        raise ValueError(f"cannot write the output folder {out}: {error}") from error


def _replace_dir(temp: Path, out: Path) -> None:
    """Move ``temp`` to ``out``; a previous ``out`` is moved aside first, then deleted."""
    if not out.exists():
        os.replace(temp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(temp, out)
    shutil.rmtree(old)


def _progress(enabled: bool) -> Progress:
    """A bar over input bytes with rate, ETA and the running token count (stderr)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[tokens]:,} tokens"),
        console=Console(stderr=True), disable=not enabled,
    )


# ---- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``nanoseek data {prepare,info}``; bad input exits with code 2 and a message."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        parser.error(str(error))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("prepare", help="tokenize a corpus into token shards")
    run.add_argument("--input", nargs="+", required=True, metavar="PATH",
                     help="files or folders: .txt .md .jsonl .parquet .arrow (HF save_to_disk)")
    run.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder")
    run.add_argument("--out", required=True, metavar="DIR", help="data folder to write")
    run.add_argument("--text-field", default="text", help="jsonl field / column with the text")
    run.add_argument("--val-fraction", type=float, default=0.01,
                     help="fraction of documents for validation (default 0.01)")
    run.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                     help="tokenizer processes (default: all cores)")
    run.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                     help=f"tokens per shard (default {DEFAULT_SHARD_TOKENS:,})")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.set_defaults(run=_run_prepare)
    info = commands.add_parser("info", help="print a data folder's manifest summary")
    info.add_argument("--data", required=True, metavar="DIR")
    info.set_defaults(run=_run_info)
    return parser


def _run_prepare(args: argparse.Namespace) -> int:
    manifest = prepare(args.input, args.out, args.tokenizer, text_field=args.text_field,
                       val_fraction=args.val_fraction, workers=args.workers,
                       shard_tokens=args.shard_tokens,
                       progress=not args.quiet and sys.stderr.isatty())
    if not args.quiet:
        print(_summary(manifest))
    return 0


def _run_info(args: argparse.Namespace) -> int:
    print(_summary(load_manifest(args.data)))
    return 0


def _summary(manifest: Manifest) -> str:
    lines = [f"{manifest.directory}: {len(manifest.sources)} sources, dtype {manifest.dtype}, "
             f"tokenizer {manifest.tokenizer_fingerprint[:16]} (vocab {manifest.vocab_size})"]
    lines += [f"  {name}: {split.tokens:,} tokens, {split.documents:,} documents, "
              f"{len(split.shards)} shards" for name, split in manifest.splits.items()]
    return "\n".join(lines)
