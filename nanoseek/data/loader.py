"""Packed, resumable, data-parallel batches from the token shards of ``nanoseek.data.prepare``.

**Packing rule: BOS-aligned best fit** (nanochat's). Each row holds ``T + 1`` tokens (inputs
``row[:-1]``, targets ``row[1:]``) and is filled with documents, each starting with its BOS:
from a buffer of ``buffer_docs`` documents take the longest one that fits the space left, whole;
when none fits, take the shortest and crop it to fill the row exactly (its tail is dropped). So

- every row starts with BOS and every document in it is seen from its start;
- rows are full (no padding); only cropped tails are lost: the last document of a row may be
  cut, and a document longer than ``T + 1`` keeps only its first ``T + 1`` tokens;
- each document that enters the buffer is emitted exactly once, whole or cropped.

Documents enter the buffer in a fresh permutation per epoch (``np.random.default_rng([seed,
epoch])``; in file order when ``shuffle=False``); the buffer carries over between epochs.

**Data parallel.** Every rank runs the same packing (cheap: it needs only document lengths);
step ``s`` uses global rows ``s*W*B .. (s+1)*W*B - 1`` and rank ``r`` reads the tokens of rows
``r*B .. r*B + B - 1`` of them. Ranks are disjoint, together they see exactly what one rank with
batch ``W*B`` sees, and the loader state is the same on every rank (save it from rank 0; a run
may resume on another world size with the same global batch and see the same data).

**Resume.** ``state_dict()`` holds the epoch, the position in the epoch's order, the buffered
document ids and the row counter (plain ints, JSON-safe); ``load_state_dict`` restores them, and
the remaining batches are exactly those the original run would have produced.

Use ``next_batch_with_docs`` for document ids ``[B, T+1]`` (0, 1, 2, ... per document within
each row) to mask attention across documents: ``same = ids[:, :, None] == ids[:, None, :]``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoseek.data.manifest import Manifest, load_manifest

STATE_VERSION = 1
DEFAULT_BUFFER_DOCS = 1000
_EMPTY = np.iinfo(np.int64).max  # length of an empty buffer slot: never fits, never shortest
Row = list[tuple[int, int]]  # (document id, tokens taken from its start), in row order


class Documents:
    """The documents of one split of a data folder, memory-mapped.

    ``documents[i]`` is document ``i``'s tokens (BOS first) as a read-only numpy view;
    ``lengths`` [n] int64 holds every document's length.
    """

    def __init__(self, data_dir: str | os.PathLike[str], split: str = "train") -> None:
        self.manifest: Manifest = load_manifest(data_dir)
        self.split = split
        info = self.manifest.split(split)
        directory = Path(data_dir)
        dtype = np.dtype(self.manifest.dtype).newbyteorder("<")  # shards are little-endian
        self.shards: list[np.ndarray] = []
        starts, lengths = [], []
        for shard in info.shards:
            tokens = _memmap(directory / shard.tokens_file, dtype, shard.tokens)
            offsets = _memmap(directory / shard.docs_file, "<i8", shard.documents + 1)
            if offsets[0] != 0 or offsets[-1] != shard.tokens or np.any(np.diff(offsets) <= 0):
                raise ValueError(f"{directory / shard.docs_file} is corrupt: re-run "
                                 "`nanoseek data prepare`")
            self.shards.append(tokens)
            starts.append(np.asarray(offsets[:-1]))
            lengths.append(np.diff(offsets))
        self.starts = np.concatenate(starts)
        self.lengths = np.concatenate(lengths)
        counts = [shard.documents for shard in info.shards]
        self.shard_of = np.repeat(np.arange(len(counts)), counts)
        digest = hashlib.sha256(split.encode())
        for shard in info.shards:
            digest.update(shard.sha256.encode())
        self.digest = digest.hexdigest()
        """Identifies the split's content (from the shards' SHA-256 in the manifest)."""

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> np.ndarray:
        start = self.starts[index]
        return self.shards[self.shard_of[index]][start:start + self.lengths[index]]


def _memmap(path: Path, dtype: np.dtype | str, count: int) -> np.ndarray:
    """``count`` items of ``dtype`` from ``path``, memory-mapped read-only; checks the size."""
    expected = count * np.dtype(dtype).itemsize
    found = path.stat().st_size if path.is_file() else None
    if found != expected:
        what = "missing" if found is None else f"{found} bytes, expected {expected}"
        raise ValueError(f"shard file {path} is {what}: re-run `nanoseek data prepare`")
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(count,))


class _DocStream:
    """Document ids, epoch after epoch, each epoch in its own order; -1 after one pass
    when ``repeat`` is False."""

    def __init__(self, count: int, seed: int, shuffle: bool, repeat: bool) -> None:
        self.count, self.seed, self.shuffle, self.repeat = count, seed, shuffle, repeat
        self.epoch = 0  # epoch of the next document
        self.index = 0  # position of the next document in the epoch's order
        self._order: np.ndarray | None = None

    def next(self) -> int:
        if self.index == self.count:
            if not self.repeat:
                return -1
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.count)
                           if self.shuffle else np.arange(self.count))
        self.index += 1
        return int(self._order[self.index - 1])

    def seek(self, epoch: int, index: int) -> None:
        if not (0 <= index <= self.count and epoch >= 0):
            raise ValueError(f"loader state position epoch={epoch}, index={index} is outside "
                             f"this split of {self.count} documents")
        self.epoch, self.index, self._order = epoch, index, None


class _BestFitPacker:
    """Plans rows of ``capacity`` tokens from a buffer of documents (lengths only)."""

    def __init__(self, lengths: np.ndarray, capacity: int, buffer_docs: int,
                 stream: _DocStream) -> None:
        self.lengths, self.capacity, self.stream = lengths, capacity, stream
        self.slot_doc = np.full(buffer_docs, -1, dtype=np.int64)
        self.slot_len = np.full(buffer_docs, _EMPTY, dtype=np.int64)
        for slot in range(buffer_docs):
            self._refill(slot)

    def next_row(self) -> Row | None:
        """The next row's documents, or None when the stream ended before the row filled."""
        row: Row = []
        used = 0
        while used < self.capacity:
            space = self.capacity - used
            fits = self.slot_len <= space
            if fits.any():  # the longest document that fits, whole
                slot = int(np.argmax(np.where(fits, self.slot_len, -1)))
                taken = int(self.slot_len[slot])
            else:  # none fits: crop the shortest to fill the row
                slot = int(np.argmin(self.slot_len))
                if self.slot_doc[slot] < 0:
                    return None
                taken = space
            row.append((int(self.slot_doc[slot]), taken))
            used += taken
            self._refill(slot)
        return row

    def buffer(self) -> list[int]:
        return self.slot_doc.tolist()

    def load_buffer(self, docs: Sequence[int]) -> None:
        if len(docs) != len(self.slot_doc) or any(not -1 <= d < len(self.lengths) for d in docs):
            raise ValueError(f"loader state buffer must hold {len(self.slot_doc)} document ids "
                             f"in -1..{len(self.lengths) - 1}")
        self.slot_doc[:] = docs
        self.slot_len[:] = np.where(self.slot_doc >= 0, self.lengths[self.slot_doc], _EMPTY)

    def _refill(self, slot: int) -> None:
        doc = self.stream.next()
        self.slot_doc[slot] = doc
        self.slot_len[slot] = self.lengths[doc] if doc >= 0 else _EMPTY


def _materialize(documents: Documents, rows: Sequence[Row],
                 capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and per-row document ids, both ``[len(rows), capacity]`` int64."""
    tokens = np.empty((len(rows), capacity), dtype=np.int64)
    doc_ids = np.empty((len(rows), capacity), dtype=np.int64)
    for r, row in enumerate(rows):
        used = 0
        for number, (doc, taken) in enumerate(row):
            tokens[r, used:used + taken] = documents[doc][:taken]
            doc_ids[r, used:used + taken] = number
            used += taken
    return torch.from_numpy(tokens), torch.from_numpy(doc_ids)


def _check_shape(seq_len: int, batch_size: int, rank: int, world_size: int,
                 buffer_docs: int) -> None:
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size),
                        ("world_size", world_size), ("buffer_docs", buffer_docs)):
        if value < 1:
            raise ValueError(f"{name}={value} must be at least 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in 0..world_size-1 (world_size={world_size})")


class PackedLoader:
    """Endless packed training batches ``[B, T+1]`` for one data-parallel rank (see module doc).

    ``tokens_per_batch`` = ``B*T`` trained tokens per rank per step. ``epoch`` counts completed
    passes of the document stream.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        split: str = "train",
        *,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        buffer_docs: int = DEFAULT_BUFFER_DOCS,
    ) -> None:
        _check_shape(seq_len, batch_size, rank, world_size, buffer_docs)
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        self.documents = Documents(data_dir, split)
        self.split, self.seq_len, self.batch_size = split, seq_len, batch_size
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.buffer_docs = min(buffer_docs, len(self.documents))
        self.rows = 0  # global rows produced so far (all ranks)
        self._stream = _DocStream(len(self.documents), seed, shuffle, repeat=True)
        self._packer = _BestFitPacker(self.documents.lengths, seq_len + 1, self.buffer_docs,
                                      self._stream)

    @property
    def tokens_per_batch(self) -> int:
        """Input tokens per rank per ``next_batch`` (``batch_size * seq_len``)."""
        return self.batch_size * self.seq_len

    @property
    def epoch(self) -> int:
        """Completed passes over the split's documents (of the stream feeding the buffer)."""
        return self._stream.epoch

    def next_batch(self) -> torch.Tensor:
        """LongTensor ``[B, T+1]`` (inputs ``[:, :-1]``, targets ``[:, 1:]``), rows BOS-first."""
        return self.next_batch_with_docs()[0]

    def next_batch_with_docs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens [B, T+1], doc_ids [B, T+1])``; doc ids number the documents of a row."""
        rows = [self._packer.next_row() for _ in range(self.world_size * self.batch_size)]
        self.rows += len(rows)
        mine = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _materialize(self.documents, mine, self.seq_len + 1)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """The loader's position (JSON-safe; identical on every rank)."""
        return {
            "version": STATE_VERSION, **self._identity(), "epoch": self._stream.epoch,
            "index": self._stream.index, "buffer": self._packer.buffer(), "rows": self.rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``; ``ValueError`` when it belongs to other data/settings."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')!r} is not "
                             f"{STATE_VERSION}")
        for key, value in self._identity().items():
            if state.get(key) != value:
                raise ValueError(f"loader state was saved with {key}={state.get(key)!r} but this "
                                 f"loader has {key}={value!r}; resume with the same data and "
                                 "settings")
        self._stream.seek(int(state["epoch"]), int(state["index"]))
        self._packer.load_buffer([int(doc) for doc in state["buffer"]])
        self.rows = int(state["rows"])

    def _identity(self) -> dict[str, Any]:
        return {"split": self.split, "data": self.documents.digest, "seq_len": self.seq_len,
                "seed": self.seed, "shuffle": self.shuffle, "buffer_docs": self.buffer_docs}


def iter_batches(
    data_dir: str | os.PathLike[str],
    split: str = "val",
    *,
    seq_len: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    buffer_docs: int = DEFAULT_BUFFER_DOCS,
    with_docs: bool = False,
) -> Iterator[torch.Tensor] | Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One deterministic pass over ``split``, packed as ``PackedLoader`` packs (file order).

    Yields LongTensors ``[B, T+1]`` (or ``(tokens, doc_ids)`` with ``with_docs``). The last
    batch may have fewer rows (the same number on every rank); a last row that cannot be filled
    is dropped. Every rank yields the same number of batches.
    """
    _check_shape(seq_len, batch_size, rank, world_size, buffer_docs)
    documents = Documents(data_dir, split)
    stream = _DocStream(len(documents), seed=0, shuffle=False, repeat=False)
    packer = _BestFitPacker(documents.lengths, seq_len + 1, min(buffer_docs, len(documents)),
                            stream)
    return _finite_batches(documents, packer, seq_len + 1, batch_size, rank, world_size,
                           with_docs)


def _finite_batches(documents: Documents, packer: _BestFitPacker, capacity: int, batch_size: int,
                    rank: int, world_size: int, with_docs: bool) -> Iterator[Any]:
    while True:
        rows: list[Row] = []
        while len(rows) < world_size * batch_size and (row := packer.next_row()) is not None:
            rows.append(row)
        per_rank = len(rows) // world_size
        if per_rank == 0:
            return
        batch = _materialize(documents, rows[rank * per_rank:(rank + 1) * per_rank], capacity)
        yield batch if with_docs else batch[0]
        if len(rows) < world_size * batch_size:
            return
