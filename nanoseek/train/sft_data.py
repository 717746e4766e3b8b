"""Chat JSONL → packed SFT rows with sample masking.

**Records.** One JSON object per line with ``messages`` (``[{"role", "content"}, ...]``, as
``nanoseek sample`` writes them); other keys are ignored. ``Tokenizer.render_chat`` turns a
conversation into ids and a loss mask (1 on assistant-produced tokens, the R1 chat format).

**Packing.** A row holds ``T + 1`` tokens (inputs ``row[:-1]``, targets ``row[1:]``), filled
with whole conversations: samples are taken in a seeded per-epoch order and each goes into the
first of the last ``window`` open rows with room (first fit); the row tail is padding. A sample
longer than ``T + 1`` is dropped (``overlong="drop"``, counted) or cut to ``T + 1``
(``"truncate"``: the model then never sees its end).

**Sample masking.** ``segment_ids [B, T]`` number the samples of a row (padding is one more
segment); attention stays inside a segment (``packed_attention_mask``: block-diagonal causal,
``[B, 1, T, T]`` bool), ``position_ids`` restart at 0 for each sample, and a target counts
only when its token is trainable and in the same sample as the input. So a packed row computes
exactly what each sample computes alone (a test holds the logits equal).

**Teacher log-probs (logit KD).** A sample may carry the teacher's top-k next-token
distribution at its trainable targets (``nanoseek.distill.traces``); rows then also hold
``kd_ids [B, T, K]``, ``kd_logprobs [B, T, K]`` and ``kd_mask [B, T]`` at the input positions
whose next token is such a target.

**Data parallel / resume.** Global micro-batch ``s`` of an epoch's rows is rows
``s·W·B … (s+1)·W·B − 1`` (wrapping into the next epoch); rank ``r`` takes its ``B`` of them.
``state_dict()`` is ``{epoch, row}``; rows are recomputed from the lengths, so a resumed run
sees exactly the batches the original would have.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nanoseek.jsonl import iter_jsonl

IGNORE_INDEX = -100
OVERLONG = ("drop", "truncate")


@dataclass
class Sample:
    """One rendered conversation: ``ids [L]``, ``mask [L]`` (1 = trainable target token),
    ``key`` (``sequence_key`` of the rendered ids before any truncation) and,
    for logit KD, the teacher's top-k at target positions ``kd_pos [N]``: ``kd_ids [N, K]``,
    ``kd_logprobs [N, K]`` (distribution of the token at ``kd_pos``)."""

    ids: np.ndarray
    mask: np.ndarray
    key: bytes = b""
    kd_pos: np.ndarray | None = None
    kd_ids: np.ndarray | None = None
    kd_logprobs: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class EncodeStats:
    """What ``encode_records`` kept and why it dropped the rest."""

    records: int = 0
    samples: int = 0
    dropped_overlong: int = 0
    longest_dropped: int = 0
    truncated: int = 0
    no_trainable: int = 0
    tokens: int = 0
    trainable_tokens: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "lengths"}
        out["max_length"] = max(self.lengths, default=0)
        return out


# -------------------------------------------------------------------- records
def sequence_key(ids: Sequence[int] | np.ndarray) -> bytes:
    """8-byte id of a token sequence (SHA-256 of its int64 ids)."""
    return hashlib.sha256(np.asarray(ids, np.int64).tobytes()).digest()[:8]


def read_chat_jsonl(paths: str | Path | Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every record of one or more chat JSONL files; ``ValueError`` naming file:line for a
    line that is not a JSON object with a ``messages`` list."""
    if isinstance(paths, str | Path):
        paths = [paths]
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"data.train: no such file {path}; give chat JSONL with "
                             "'messages' per line (e.g. written by `nanoseek sample`)")
        for lineno, record in iter_jsonl(path, invalid="not valid JSON"):
            if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
                raise ValueError(f"{path}:{lineno}: expected an object with a 'messages' "
                                 "list of {role, content} dicts")
            record["_where"] = f"{path}:{lineno}"
            records.append(record)
    return records


def split_records(records: Sequence[dict[str, Any]], val_fraction: float
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, val)``: a record is held out when the hash of its messages falls in the first
    ``val_fraction`` of the hash range (stable whatever the file order)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction: {val_fraction} must be in [0, 1)")
    train, val = [], []
    for record in records:
        text = json.dumps(record["messages"], sort_keys=True, ensure_ascii=False)
        bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8
        (val if bucket < val_fraction else train).append(record)
    return train, val


def encode_records(records: Sequence[dict[str, Any]], tokenizer: Any, max_len: int, *,
                   overlong: str = "drop", thinking: bool = True, last_turn_only: bool = False
                   ) -> tuple[list[Sample], EncodeStats]:
    """Render each record with ``tokenizer.render_chat``; keep samples of at most ``max_len``
    tokens (see ``overlong``) with at least one trainable target."""
    if overlong not in OVERLONG:
        raise ValueError(f"data.overlong: {overlong!r} is unknown; use one of {OVERLONG}")
    samples, stats = [], EncodeStats(records=len(records))
    for record in records:
        try:
            enc = tokenizer.render_chat(record["messages"], thinking=thinking,
                                        last_turn_only=last_turn_only)
        except ValueError as e:
            raise ValueError(f"{record.get('_where', 'record')}: {e}") from None
        ids, mask = np.asarray(enc.ids, np.int64), np.asarray(enc.loss_mask, bool)
        key = sequence_key(ids)
        if len(ids) > max_len:
            if overlong == "drop":
                stats.dropped_overlong += 1
                stats.longest_dropped = max(stats.longest_dropped, len(ids))
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            stats.truncated += 1
        mask[0] = False  # the first token is never a target
        if not mask.any():
            stats.no_trainable += 1
            continue
        samples.append(Sample(ids, mask, key))
        stats.tokens += len(ids)
        stats.trainable_tokens += int(mask.sum())
        stats.lengths.append(len(ids))
    stats.samples = len(samples)
    return samples, stats


# -------------------------------------------------------------------- packing
def pack_rows(lengths: Sequence[int], capacity: int, order: Sequence[int],
              window: int = 64) -> list[list[int]]:
    """Rows of sample indices, each summing to at most ``capacity`` tokens: samples in
    ``order``, each into the first of the last ``window`` open rows with room, else a new row
    (the oldest open row closes when more than ``window`` are open). Rows come out in the order
    they were opened."""
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for i in order:
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than a row's {capacity}")
        for r in range(first_open, len(rows)):
            if room[r] >= n:
                rows[r].append(int(i))
                room[r] -= n
                break
        else:
            rows.append([int(i)])
            room.append(capacity - n)
            first_open = max(first_open, len(rows) - window)
    return rows


def make_batch(samples: Sequence[Sample], rows: Sequence[Sequence[int]], seq_len: int,
               pad_id: int) -> dict[str, torch.Tensor]:
    """Materialize ``rows`` (sample indices) as a batch of ``B = len(rows)`` rows of ``T =
    seq_len`` inputs: ``input_ids``, ``targets`` (``IGNORE_INDEX`` off the trainable tokens),
    ``position_ids``, ``segment_ids`` (all ``[B, T]`` int64) and, when the samples carry teacher
    top-k, ``kd_ids [B, T, K]`` int64, ``kd_logprobs [B, T, K]`` float32, ``kd_mask [B, T]``."""
    b, cap = len(rows), seq_len + 1
    tokens = np.full((b, cap), pad_id, np.int64)
    train = np.zeros((b, cap), bool)
    seg = np.zeros((b, cap), np.int64)
    pos = np.zeros((b, cap), np.int64)
    kd = any(samples[i].kd_ids is not None for row in rows for i in row)
    k = next((samples[i].kd_ids.shape[1] for row in rows for i in row
              if samples[i].kd_ids is not None), 0)
    kd_ids, kd_lp = np.zeros((b, cap, k), np.int64), np.zeros((b, cap, k), np.float32)
    kd_mask = np.zeros((b, cap), bool)
    for r, row in enumerate(rows):
        start = 0
        for number, i in enumerate(row):
            s = samples[i]
            end = start + len(s)
            tokens[r, start:end], train[r, start:end] = s.ids, s.mask
            seg[r, start:end], pos[r, start:end] = number, np.arange(len(s))
            if kd and s.kd_pos is not None:
                keep = s.kd_pos < len(s)
                at = start + s.kd_pos[keep]
                kd_ids[r, at], kd_lp[r, at], kd_mask[r, at] = (s.kd_ids[keep],
                                                                s.kd_logprobs[keep], True)
            start = end
        seg[r, start:], pos[r, start:] = len(row), np.arange(cap - start)
    same = seg[:, 1:] == seg[:, :-1]
    targets = np.where(train[:, 1:] & same, tokens[:, 1:], IGNORE_INDEX)
    batch = {"input_ids": tokens[:, :-1], "targets": targets, "position_ids": pos[:, :-1],
             "segment_ids": seg[:, :-1]}
    if kd:
        batch.update(kd_ids=kd_ids[:, 1:], kd_logprobs=kd_lp[:, 1:],
                     kd_mask=kd_mask[:, 1:] & (targets != IGNORE_INDEX))
    return {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in batch.items()}


def packed_attention_mask(segment_ids_BT: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask ``[B, 1, T, T]`` (True = may attend): query t sees key s iff
    s <= t and both are in the same sample."""
    t = segment_ids_BT.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=segment_ids_BT.device).tril()
    same = segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :]
    return (same & causal)[:, None]


# -------------------------------------------------------------------- loaders
class PackedSFTLoader:
    """``BatchSource`` of packed SFT rows, epoch after epoch (see the module docstring).

    ``next_batch()`` → ``make_batch``'s dict for this rank's ``batch_size`` rows."""

    def __init__(self, samples: Sequence[Sample], seq_len: int, batch_size: int, *,
                 pad_id: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, window: int = 64) -> None:
        if not samples:
            raise ValueError("data.train: no usable conversations (see the drop counts)")
        self.samples, self.seq_len, self.batch_size = samples, seq_len, batch_size
        self.pad_id, self.rank, self.world_size = pad_id, rank, world_size
        self.seed, self.shuffle, self.window = seed, shuffle, window
        self.lengths = np.array([len(s) for s in samples])
        self.epoch, self.row = 0, 0
        self._rows: list[list[int]] | None = None
        self.digest = self._identity()

    def _identity(self) -> str:
        """What a resumed loader must share with the saved one: every sample's tokens and
        mask, and the packing settings (another seq_len, seed or window packs other rows)."""
        h = hashlib.sha256(json.dumps([self.seq_len, self.seed, self.shuffle, self.window,
                                       len(self.samples)]).encode())
        for sample in self.samples:
            h.update(np.asarray(sample.ids, np.int64).tobytes())
            h.update(np.asarray(sample.mask, bool).tobytes())
        return h.hexdigest()[:16]

    def rows_of_epoch(self, epoch: int) -> list[list[int]]:
        """The packed rows (sample indices) of ``epoch``."""
        n = len(self.samples)
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        return pack_rows(self.lengths, self.seq_len + 1, order, self.window)

    def _next_rows(self, count: int) -> list[list[int]]:
        out = []
        while len(out) < count:
            if self._rows is None:
                self._rows = self.rows_of_epoch(self.epoch)
            if self.row >= len(self._rows):
                self.epoch, self.row, self._rows = self.epoch + 1, 0, None
                continue
            out.append(self._rows[self.row])
            self.row += 1
        return out

    def next_batch(self) -> dict[str, torch.Tensor]:
        rows = self._next_rows(self.batch_size * self.world_size)
        mine = rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return make_batch(self.samples, mine, self.seq_len, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "row": self.row, "digest": self.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("digest") != self.digest:
            raise ValueError("--resume: the SFT data differ from the checkpoint's (other "
                             "files or tokenizer, or another seq_len, seed, shuffle or "
                             "window); resume with the same data and settings")
        self.epoch, self.row, self._rows = int(state["epoch"]), int(state["row"]), None


def iter_eval_batches(samples: Sequence[Sample], seq_len: int, batch_size: int, pad_id: int,
                      rank: int = 0, world_size: int = 1, window: int = 64
                      ) -> Iterator[dict[str, torch.Tensor]]:
    """Every sample once (packed in file order), rank ``r`` taking every ``W``-th batch.
    Every rank yields the same number of batches (under FSDP each forward is a collective,
    and a rank with one forward more waits forever): short ranks end with a padding batch
    whose targets are all ``IGNORE_INDEX``, which adds nothing to the sums."""
    lengths = [len(s) for s in samples]
    rows = pack_rows(lengths, seq_len + 1, range(len(samples)), window)
    batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    for i in range(math.ceil(len(batches) / world_size)):
        if i * world_size + rank < len(batches):
            yield make_batch(samples, batches[i * world_size + rank], seq_len, pad_id)
            continue
        padding = make_batch(samples, batches[0][:1], seq_len, pad_id)
        padding["targets"].fill_(IGNORE_INDEX)
        if "kd_mask" in padding:
            padding["kd_mask"].zero_()
        yield padding
