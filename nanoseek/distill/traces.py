"""Teacher traces for distillation: verified samples (rejection sampling) and the teacher's
top-k next-token log-probs on them.

**Traces** come from ``nanoseek.rl.sample.rejection_sample``: k samples per prompt, scored by
the accuracy and format rewards, verified ones kept (deduplicated; optionally only the
shortest), appended to SFT JSONL with statistics, resumable. ``generate_traces`` adds the
distillation rule for a teacher that solves nothing: a ``ValueError`` with the numbers, and
the empty trace file and its commit log removed (so a rerun with a better teacher starts
fresh instead of skipping every prompt as done); the ``.stats.json`` stays as the record.

**Top-k log-probs** (for logit KD) are computed by *teacher forcing*: one forward of the
teacher over each trace exactly as the student will see it (``render_chat`` ids), keeping at
every trainable target the K most likely tokens and their log-probs (full softmax over the
shared vocabulary, temperature 1). Scoring the rendered ids rather than keeping the engine's
sampling-time log-probs matters twice: the stored text re-tokenizes to ids that can differ
from the sampled ones, and sampling-time distributions are tempered / top-p cut. The teacher
runs once; student training reads the file.

**File** ``traces.topk.safetensors`` (written to a temporary name, then renamed): tensors
``keys [R, 8]`` uint8 (``sequence_key`` of each scored sequence), ``offsets [R + 1]`` int64,
``positions [N]`` int32 (index of the target token in the rendered ids), ``ids [N, K]`` int32
and ``logprobs [N, K]`` float32; metadata ``format``, ``version``, ``k``, ``tokenizer`` (the
tokenizer fingerprint) and ``teacher``. Scoring again reuses every sequence already in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nanoseek.train.sft_data import sequence_key

log = logging.getLogger(__name__)

FORMAT = "nanoseek-topk"
VERSION = 1
Scored = tuple[np.ndarray, np.ndarray, np.ndarray]  # positions [N], ids [N, K], logprobs [N, K]


def topk_path(traces: str | Path) -> Path:
    """``traces.jsonl`` → ``traces.topk.safetensors``."""
    traces = Path(traces)
    return traces.with_name(traces.stem + ".topk.safetensors")


@dataclass
class TeacherTopK:
    """The teacher's top-k log-probs of many sequences, looked up by ``sequence_key``."""

    k: int
    tokenizer: str
    teacher: str
    entries: dict[bytes, Scored]

    def lookup(self, key: bytes) -> Scored | None:
        """``(positions, ids, logprobs)`` of the sequence with ``sequence_key`` ``key``, or
        None if it was not scored."""
        return self.entries.get(key)

    def save(self, path: str | Path) -> None:
        """Write the file atomically (see the module docstring)."""
        from safetensors.numpy import save_file

        path = Path(path)
        keys = list(self.entries)
        parts = [self.entries[key] for key in keys]
        lengths = [len(p[0]) for p in parts]
        tensors = {
            "keys": np.frombuffer(b"".join(keys), np.uint8).reshape(len(keys), 8),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            "positions": _cat([p[0] for p in parts], (0,), np.int32),
            "ids": _cat([p[1] for p in parts], (0, self.k), np.int32),
            "logprobs": _cat([p[2] for p in parts], (0, self.k), np.float32),
        }
        meta = {"format": FORMAT, "version": str(VERSION), "k": str(self.k),
                "tokenizer": self.tokenizer, "teacher": self.teacher}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> TeacherTopK:
        """Read a file written by ``save``; ``ValueError`` if it is not one."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"kd top-k file {path} does not exist; `nanoseek distill` writes "
                             "it when kd.weight > 0")
        try:
            with safe_open(str(path), "np") as f:
                meta = f.metadata() or {}
                t = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable top-k file ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise ValueError(f"{path}: format {meta.get('format')!r} version "
                             f"{meta.get('version')!r}, expected {FORMAT!r} {VERSION}")
        off = t["offsets"]
        entries = {bytes(t["keys"][i]): (t["positions"][off[i]:off[i + 1]],
                                         t["ids"][off[i]:off[i + 1]],
                                         t["logprobs"][off[i]:off[i + 1]])
                   for i in range(len(t["keys"]))}
        return cls(int(meta["k"]), meta["tokenizer"], meta["teacher"], entries)


def _cat(arrays: list[np.ndarray], empty_shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(empty_shape, dtype)


# -------------------------------------------------------------------- scoring
@torch.no_grad()
def score_sequences(model: nn.Module, sequences: Sequence[tuple[np.ndarray, np.ndarray]],
                    k: int, vocab_size: int, batch_tokens: int = 8192) -> list[Scored]:
    """Teacher forcing: for each ``(ids [L], mask [L])`` the top-``k`` log-probs of the next
    token at every position ``t`` with ``mask[t]`` (predicted from ``t − 1``), over the first
    ``vocab_size`` ids. Sequences run right-padded in batches of about ``batch_tokens``."""
    from nanoseek.model.layers import causal_mask

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[Scored | None] = [None] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    groups: list[list[int]] = [[]]
    for i in order:  # ascending lengths: the newest member is the longest
        if groups[-1] and len(sequences[i][0]) * (len(groups[-1]) + 1) > batch_tokens:
            groups.append([])
        groups[-1].append(i)
    for group in groups if order else []:
        scored = _score_group(model, [sequences[i] for i in group], k, vocab_size, device,
                              causal_mask)
        for i, item in zip(group, scored, strict=True):
            out[i] = item
    model.train(was_training)
    return out  # type: ignore[return-value]


def _score_group(model: nn.Module, group: list[tuple[np.ndarray, np.ndarray]], k: int,
                 vocab_size: int, device: torch.device, causal_mask: Any) -> list[Scored]:
    t = max(len(ids) for ids, _ in group)
    ids_BT = torch.zeros(len(group), t, dtype=torch.long)
    real_BT = torch.zeros(len(group), t, dtype=torch.bool)
    for b, (ids, _) in enumerate(group):
        ids_BT[b, :len(ids)] = torch.from_numpy(np.asarray(ids, np.int64))
        real_BT[b, :len(ids)] = True
    ids_BT, real_BT = ids_BT.to(device), real_BT.to(device)
    pos_BT = torch.arange(t, device=device).expand(len(group), t)
    h_BTD = model.forward_hidden(ids_BT, pos_BT, causal_mask(t, t, real_BT, device))
    results = []
    for b, (_, mask) in enumerate(group):
        targets = np.flatnonzero(np.asarray(mask, bool))
        targets = targets[targets > 0]
        h_ND = h_BTD[b, torch.from_numpy(targets - 1).to(device)]
        logits = model.logits_from_hidden(h_ND)[:, :vocab_size].float()
        values, top = logits.log_softmax(-1).topk(min(k, logits.shape[-1]), dim=-1)
        results.append((targets.astype(np.int32), top.cpu().numpy().astype(np.int32),
                        values.cpu().numpy().astype(np.float32)))
    return results


def score_traces(teacher: nn.Module, tokenizer: Any, records: Sequence[dict[str, Any]],
                 out_path: str | Path, k: int = 20, *, thinking: bool = True,
                 last_turn_only: bool = False, teacher_name: str = "",
                 batch_tokens: int = 8192) -> TeacherTopK:
    """Top-``k`` teacher log-probs at the trainable targets of every record (rendered with
    ``tokenizer.render_chat`` as SFT renders them), saved to ``out_path``; sequences already
    in an existing file made with the same tokenizer and k are not scored again."""
    if k < 1:
        raise ValueError(f"kd.top_k: {k} must be >= 1")
    fingerprint, out_path = tokenizer.fingerprint(), Path(out_path)
    topk = TeacherTopK(k, fingerprint, teacher_name, {})
    if out_path.exists():
        old = TeacherTopK.load(out_path)
        if old.k == k and old.tokenizer == fingerprint:
            topk.entries = old.entries
    todo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
    for record in records:
        enc = tokenizer.render_chat(record["messages"], thinking=thinking,
                                    last_turn_only=last_turn_only)
        key = sequence_key(enc.ids)
        if key not in topk.entries:
            todo[key] = (np.asarray(enc.ids, np.int64), np.asarray(enc.loss_mask, bool))
    if todo:
        scored = score_sequences(teacher, list(todo.values()), k, tokenizer.vocab_size,
                                 batch_tokens)
        topk.entries.update(zip(todo, scored, strict=True))
        topk.save(out_path)
    log.info("teacher top-%d log-probs: %d sequences scored, %d reused -> %s", k, len(todo),
             len(topk.entries) - len(todo), out_path)
    return topk


# -------------------------------------------------------------------- traces
def generate_traces(generator: Any, problems: Sequence[Any], out_path: str | Path, *,
                    samples: int = 4, **kwargs: Any) -> Any:
    """``rejection_sample(generator, problems, samples, out_path, **kwargs)``; raises
    ``ValueError`` with the numbers (and removes the empty trace file and its log) when no
    trace was kept. Returns the ``SampleStats``."""
    from nanoseek.rl.sample import progress_path, rejection_sample, stats_path

    stats = rejection_sample(generator, problems, samples, out_path, **kwargs)
    if stats.kept == 0:
        out = Path(out_path)
        out.unlink(missing_ok=True)
        progress_path(out).unlink(missing_ok=True)
        raise ValueError(
            f"the teacher solved nothing: 0 of {stats.samples} samples on {stats.prompts} "
            f"prompts were verified ({stats.correct} correct, {stats.formatted} "
            f"well-formatted, {stats.skipped_too_long} prompts longer than the context); "
            f"no traces, so no student was trained (stats: {stats_path(out)}). Use a "
            "stronger teacher, more samples, a larger max_tokens or easier problems")
    return stats
