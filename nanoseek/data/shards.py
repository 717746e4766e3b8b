"""Tokenizing work units (in worker processes) and writing them into train/val token shards.

``tokenize_all`` encodes the ``Unit``s of ``nanoseek.data.sources`` as ``[BOS] + ids`` in
``workers`` spawned processes, in input order; ``write_corpus`` streams the results into
``{split}-{k:05d}.bin/.idx`` shards, sending each document to train or validation by its
position. Shard layout and the split rule: see ``nanoseek.data.prepare``.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from fractions import Fraction
from itertools import chain, islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rich.progress import Progress, TaskID

from nanoseek.data.manifest import SPLITS, ShardInfo, SplitInfo
from nanoseek.data.sources import Unit, unit_texts
from nanoseek.tokenizer import Tokenizer

ENCODE_BATCH = 1024  # documents per encode_batch call


class Tokenized(NamedTuple):
    """A unit's non-empty documents as ``[BOS] + ids``, back to back, and their lengths."""

    source: int
    size: int
    tokens: np.ndarray  # [sum(lengths)] in the shard dtype, every document starts with BOS
    lengths: np.ndarray  # [documents] int64


def _tokenize_unit(unit: Unit, tokenizer: Tokenizer, text_field: str,
                   dtype: np.dtype) -> Tokenized:
    """Encode a unit's non-empty documents as ``[BOS] + ids`` into one flat array."""
    parts, lengths = [], []
    texts = (text for text in unit_texts(unit, text_field) if text)
    while batch := list(islice(texts, ENCODE_BATCH)):
        ids = tokenizer.encode_batch(batch, add_bos=True)
        sizes = [len(doc) for doc in ids]
        parts.append(np.fromiter(chain.from_iterable(ids), dtype=dtype, count=sum(sizes)))
        lengths += sizes
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype)
    return Tokenized(unit.source, unit.size, tokens, np.asarray(lengths, dtype=np.int64))


# ---- parallel map ---------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}  # set once per worker process by _init_worker


def _init_worker(tokenizer: Tokenizer, text_field: str, dtype: np.dtype) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    _WORKER.update(tokenizer=tokenizer, text_field=text_field, dtype=dtype)


def _worker_tokenize(unit: Unit) -> Tokenized:
    return _tokenize_unit(unit, **_WORKER)


def tokenize_all(units: Iterable[Unit], workers: int, tokenizer: Tokenizer, text_field: str,
                 dtype: np.dtype) -> Iterator[Tokenized]:
    """Tokenized units in input order, ``workers`` processes, at most 2 per worker in flight."""
    if workers == 1:
        for unit in units:
            yield _tokenize_unit(unit, tokenizer, text_field, dtype)
        return
    pending: deque[Future[Tokenized]] = deque()
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



def write_corpus(results: Iterable[Tokenized], directory: Path, dtype: np.dtype,
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
