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
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from itertools import chain, islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from nanoseek.data.manifest import (
    MANIFEST_NAME,
    SPLITS,
    Manifest,
    ShardInfo,
    SplitInfo,
    check_tokenizer,
    load_manifest,
    token_dtype,
)
from nanoseek.tokenizer import JSONL_SUFFIXES, TEXT_SUFFIXES, Tokenizer, iter_documents

DEFAULT_SHARD_TOKENS = 2**26
"""Tokens per shard (128 MiB of uint16); a document longer than this gets a shard of its own."""
KINDS = {**dict.fromkeys(TEXT_SUFFIXES, "text"), **dict.fromkeys(JSONL_SUFFIXES, "jsonl"),
         ".parquet": "parquet", ".arrow": "arrow"}
ENCODE_BATCH = 1024  # documents per encode_batch call
TEXT_UNIT_DOCS = 4096  # text/JSONL/extra documents are read here and sent to workers this many
TEXT_UNIT_BYTES = 2**22  # a guess at one such unit's size, to cap the worker count
UNIT_ROWS = 16384  # Arrow record batches are grouped into work units of at least this many rows
EXTRA_SOURCE = "<extra_documents>"
__all__ = ["Manifest", "Source", "check_tokenizer", "collect_sources", "load_manifest", "main",
           "prepare", "token_dtype"]


# ---- inputs and work units ------------------------------------------------------------------


class Source(NamedTuple):
    """One input file and how to read it (``kind``: text, jsonl, parquet or arrow)."""

    path: Path
    kind: str


class _Unit(NamedTuple):
    """A piece of work for one process: Parquet row groups or Arrow record batches
    ``start:stop`` of ``path``, or (kind "texts") the documents themselves."""

    source: int  # index into the sources list
    path: str
    kind: str
    start: int = 0
    stop: int = 0
    size: int = 0  # bytes, for the progress bar
    texts: tuple[str, ...] = ()


class _Tokenized(NamedTuple):
    source: int
    size: int
    tokens: np.ndarray  # [sum(lengths)] in the shard dtype, every document starts with BOS
    lengths: np.ndarray  # [documents] int64


def collect_sources(inputs: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """Expand files and folders into a sorted, de-duplicated list of readable sources."""
    sources: list[Source] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in KINDS
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not found:
                raise ValueError(f"folder {item} has no {', '.join(KINDS)} files")
            sources += [Source(p, KINDS[p.suffix]) for p in found]
        elif item.is_file():
            if item.suffix not in KINDS:
                raise ValueError(f"{item}: unsupported file type {item.suffix!r}; use one of "
                                 f"{', '.join(KINDS)}")
            sources.append(Source(item, KINDS[item.suffix]))
        else:
            raise ValueError(f"input {item} does not exist")
    return list(dict.fromkeys(sources))


def _plan_units(sources: Sequence[Source], text_field: str) -> list[_Unit]:
    """Parquet/Arrow ranges (schemas checked now, before any work) and one unit per text/JSONL
    file (split into "texts" units as it is read: ``_read_units``)."""
    units: list[_Unit] = []
    for index, (path, kind) in enumerate(sources):
        if kind == "parquet":
            units += _parquet_units(index, path, text_field)
        elif kind == "arrow":
            units += _arrow_units(index, path, text_field)
        else:
            units.append(_Unit(index, str(path), kind, size=path.stat().st_size))
    return units


def _parquet_units(index: int, path: Path, text_field: str) -> list[_Unit]:
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path} is not a readable Parquet file: {error}") from error
    _check_column(schema, path, text_field)
    return [_Unit(index, str(path), "parquet", g, g + 1, meta.row_group(g).total_byte_size)
            for g in range(meta.num_row_groups)]


def _arrow_units(index: int, path: Path, text_field: str) -> list[_Unit]:
    schema, batches = _arrow_batches(path)
    _check_column(schema, path, text_field)
    units, start, stop, rows, size = [], 0, 0, 0, 0
    for stop, batch in enumerate(batches, start=1):
        rows, size = rows + batch.num_rows, size + batch.nbytes
        if rows >= UNIT_ROWS:
            units.append(_Unit(index, str(path), "arrow", start, stop, size))
            start, rows, size = stop, 0, 0
    if rows:
        units.append(_Unit(index, str(path), "arrow", start, stop, size))
    return units


def _arrow_batches(path: Path) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and record batches of an Arrow IPC stream (HF ``datasets``) or IPC file."""
    try:
        source = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(source)
            return reader.schema, iter(reader)
        except pa.ArrowInvalid:
            file = pa.ipc.open_file(source)
            return file.schema, (file.get_batch(i) for i in range(file.num_record_batches))
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{path} is not an Arrow IPC stream or file: {error}") from error


def _check_column(schema: pa.Schema, path: Path, text_field: str) -> None:
    if text_field not in schema.names:
        raise ValueError(f"{path} has no column {text_field!r} (columns: {schema.names}); "
                         "set --text-field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_string_view(kind)):
        raise ValueError(f"{path}: column {text_field!r} has type {kind}, expected strings")


def _read_units(planned: Iterable[_Unit], text_field: str, extra_source: int,
                extra_documents: Iterable[str] | None) -> Iterator[_Unit]:
    """Work units in corpus order; text/JSONL files and extra documents are read here."""
    for unit in planned:
        if unit.kind in ("text", "jsonl"):
            documents = iter_documents([Path(unit.path)], text_field)
            yield from _text_units(unit.source, documents, unit.size)
        else:
            yield unit
    if extra_documents is not None:
        yield from _text_units(extra_source, _checked_strings(extra_documents), None)


def _text_units(source: int, documents: Iterable[str], size: int | None) -> Iterator[_Unit]:
    """``TEXT_UNIT_DOCS`` documents per unit; the last unit of a file carries the rest of its
    ``size`` (bytes, for the progress bar; characters when ``size`` is None)."""
    documents = iter(documents)
    batch = tuple(islice(documents, TEXT_UNIT_DOCS))
    while batch:
        following = tuple(islice(documents, TEXT_UNIT_DOCS))
        part = sum(map(len, batch))
        if size is not None:
            part = min(part, size) if following else size
            size -= part
        yield _Unit(source, "", "texts", size=part, texts=batch)
        batch = following


def _checked_strings(documents: Iterable[str]) -> Iterator[str]:
    for position, text in enumerate(documents):
        if not isinstance(text, str):
            raise ValueError(f"extra_documents[{position}] is a {type(text).__name__}, "
                             "not a string")
        yield text


def _unit_texts(unit: _Unit, text_field: str) -> Iterator[str | None]:
    """The raw documents of one unit, in file order."""
    if unit.kind == "texts":
        yield from unit.texts
    elif unit.kind == "parquet":
        batches = pq.ParquetFile(unit.path).iter_batches(
            row_groups=range(unit.start, unit.stop), columns=[text_field])
        for batch in batches:
            yield from batch.column(0).to_pylist()
    else:
        _, batches = _arrow_batches(Path(unit.path))
        for batch in islice(batches, unit.start, unit.stop):
            yield from batch.column(text_field).to_pylist()


def _tokenize_unit(unit: _Unit, tokenizer: Tokenizer, text_field: str,
                   dtype: np.dtype) -> _Tokenized:
    """Encode a unit's non-empty documents as ``[BOS] + ids`` into one flat array."""
    parts, lengths = [], []
    texts = (text for text in _unit_texts(unit, text_field) if text)
    while batch := list(islice(texts, ENCODE_BATCH)):
        ids = tokenizer.encode_batch(batch, add_bos=True)
        sizes = [len(doc) for doc in ids]
        parts.append(np.fromiter(chain.from_iterable(ids), dtype=dtype, count=sum(sizes)))
        lengths += sizes
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return _Tokenized(unit.source, unit.size, tokens, np.asarray(lengths, dtype=np.int64))


# ---- parallel map ---------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # set once per worker process by _init_worker


def _init_worker(tokenizer: Tokenizer, text_field: str, dtype: np.dtype) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _WORKER.update(tokenizer=tokenizer, text_field=text_field, dtype=dtype)


def _worker_tokenize(unit: _Unit) -> _Tokenized:
    return _tokenize_unit(unit, **_WORKER)


def _tokenize_all(units: Iterable[_Unit], workers: int, tokenizer: Tokenizer, text_field: str,
                  dtype: np.dtype) -> Iterator[_Tokenized]:
    """Tokenized units in input order, ``workers`` processes, at most 2 per worker in flight."""
    if workers == 1:
        for unit in units:
            yield _tokenize_unit(unit, tokenizer, text_field, dtype)
        return
    pending: deque[Future[_Tokenized]] = deque()
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(tokenizer, text_field, dtype)) as pool:
        try:
            for unit in units:
                pending.append(pool.submit(_worker_tokenize, unit))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool as error:
            raise RuntimeError("a tokenizer process died (out of memory?); retry with fewer "
                               "--workers") from error
        finally:
            for future in pending:
                future.cancel()


# ---- writing --------------------------------------------------------------------------------


class _ShardWriter:
    """Appends whole documents of one split to ``{split}-{k:05d}.bin/.idx`` shards."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = (
            directory, split, dtype, shard_tokens)
        self.shards: list[ShardInfo] = []
        self.file: Any = None
        self.hasher = hashlib.sha256()
        self.lengths: list[np.ndarray] = []
        self.count = 0  # tokens in the open shard

    def add(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Write documents (``tokens`` back to back, ``lengths`` [n]); none straddles shards."""
        ends = np.cumsum(lengths)
        done = 0  # documents written
        while done < len(lengths):
            base = int(ends[done - 1]) if done else 0
            fit = int(np.searchsorted(ends[done:] - base, self.shard_tokens - self.count,
                                      side="right"))
            if fit == 0 and self.count:
                self._close_shard()
                continue
            fit = max(fit, 1)  # a document longer than a shard gets a shard of its own
            self._write(tokens[base:ends[done + fit - 1]], lengths[done:done + fit])
            done += fit

    def close(self) -> SplitInfo:
        """Finish the last shard; the split's totals and shard list."""
        if self.file is not None:
            self._close_shard()
        return SplitInfo(sum(s.documents for s in self.shards),
                         sum(s.tokens for s in self.shards), tuple(self.shards))

    def _write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        if self.file is None:
            self.file = (self.directory / self._name(".bin")).open("wb")
        data = tokens.astype(self.dtype, copy=False).tobytes()
        self.file.write(data)
        self.hasher.update(data)
        self.lengths.append(lengths)
        self.count += len(tokens)

    def _close_shard(self) -> None:
        self.file.close()
        lengths = np.concatenate(self.lengths)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")
        (self.directory / self._name(".idx")).write_bytes(offsets.tobytes())
        self.shards.append(ShardInfo(self._name(".bin"), self._name(".idx"), len(lengths),
                                     self.count, self.hasher.hexdigest()))
        self.file, self.hasher, self.lengths, self.count = None, hashlib.sha256(), [], 0

    def _name(self, suffix: str) -> str:
        return f"{self.split}-{len(self.shards):05d}{suffix}"


def _val_mask(first: int, count: int, fraction: Fraction) -> np.ndarray:
    """[count] bool: document ``i`` is validation when ``ceil((i+1)f) > ceil(i f)``."""
    index = np.arange(first, first + count + 1, dtype=np.int64)
    ceil = -((-index * fraction.numerator) // fraction.denominator)
    return ceil[1:] > ceil[:-1]


def _progress(enabled: bool) -> Progress:
    """A bar over input bytes with rate, ETA and the running token count (stderr)."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[tokens]:,} tokens"),
        console=Console(stderr=True), disable=not enabled,
    )


def _write_corpus(results: Iterable[_Tokenized], directory: Path, dtype: np.dtype,
                  val_fraction: float, shard_tokens: int, bar: Progress, task: TaskID
                  ) -> tuple[dict[str, SplitInfo], dict[int, tuple[int, int]]]:
    """Stream tokenized units into train/val shards.

    Returns the splits and, per source index, its (documents, tokens).
    """
    writers = {name: _ShardWriter(directory, name, dtype, shard_tokens) for name in SPLITS}
    fraction = Fraction(val_fraction).limit_denominator(1_000_000)
    counts: dict[int, tuple[int, int]] = {}
    seen = tokens = 0
    for result in results:
        is_val = _val_mask(seen, len(result.lengths), fraction)
        in_val = np.repeat(is_val, result.lengths)
        writers["val"].add(result.tokens[in_val], result.lengths[is_val])
        writers["train"].add(result.tokens[~in_val], result.lengths[~is_val])
        seen += len(result.lengths)
        tokens += len(result.tokens)
        documents, source_tokens = counts.get(result.source, (0, 0))
        counts[result.source] = (documents + len(result.lengths),
                                 source_tokens + len(result.tokens))
        bar.update(task, advance=result.size, tokens=tokens)
    return {name: writer.close() for name, writer in writers.items()}, counts


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
    planned = _plan_units(sources, text_field)
    total: int | None = sum(unit.size for unit in planned)
    estimate = sum(-(-unit.size // TEXT_UNIT_BYTES) if unit.kind in ("text", "jsonl") else 1
                   for unit in planned)
    if extra_documents is not None:  # streamed from the caller: size unknown up front
        sources.append(Source(Path(EXTRA_SOURCE), "extra"))
        total, estimate = None, workers
    units = _read_units(planned, text_field, len(sources) - 1, extra_documents)
    workers = max(1, min(workers, estimate))
    out = Path(out_dir)
    temp = _make_temp_dir(out)
    try:
        dtype = token_dtype(tokenizer.vocab_size)
        with _progress(progress) as bar:
            task = bar.add_task("tokenizing", total=total, tokens=0)
            results = _tokenize_all(units, workers, tokenizer, text_field, dtype)
            splits, counts = _write_corpus(results, temp, dtype, val_fraction, shard_tokens,
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
