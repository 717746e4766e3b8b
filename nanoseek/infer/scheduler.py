"""Sequences and the continuous-batching scheduler.

Every step is either a **prefill** step or a **decode** step (as in nano-vllm):

* prefill: sequences with uncomputed tokens (partly prefilled ones first, then the waiting
  queue in arrival order) are packed under a token budget (``max_num_batched_tokens``); the
  last one may get only a chunk of its prompt (chunked prefill). A new sequence first takes
  the cached blocks of its prefix (``BlockManager.match_prefix``).
* decode: every running sequence computes its newest token (plus its draft under
  speculative decoding). When blocks run out, the most recently admitted sequence is
  **preempted by recompute**: its blocks are freed (its full ones stay in the prefix cache)
  and it returns to the front of the waiting queue, keeping its tokens.

Samples ``1..n-1`` of a request wait until sample 0 has prefilled the prompt, then share the
prompt's full blocks through the prefix cache (ref counts), recomputing only the last partial
block.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nanoseek.infer.cache import BlockManager


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One sample of a request: its tokens, cache blocks and sampling/streaming state."""

    seq_id: int
    request_id: str
    index: int  # sample index within the request (0..n-1)
    token_ids: list[int]  # prompt + generated
    num_prompt_tokens: int
    max_tokens: int  # generated-token limit after clipping to the context
    sampler: Any = None  # the sampling helper's per-sample state
    detok: Any = None  # IncrementalDetokenizer or None (no tokenizer)
    parent: Sequence | None = None  # sample 0 of the request, for samples 1..n-1
    status: Status = Status.WAITING
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_cached_tokens: int | None = None  # prompt tokens served by the prefix cache (1st time)
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    text: str = ""
    logprobs: list | None = None
    new_token_ids: list[int] = field(default_factory=list)  # since the last output
    new_text: str = ""
    num_preemptions: int = 0
    draft: Any = None  # speculative: (draft token id, draft probs [V] or None)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED


@dataclass
class Batch:
    """What one step computes: ``num_new[i]`` tokens of ``seqs[i]`` starting at its
    ``num_computed_tokens``; ``prefill`` says which kind of step it is."""

    prefill: bool
    seqs: list[Sequence]
    num_new: list[int]

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new)


class Scheduler:
    """Waiting queue, running list, token budget, preemption (see module docstring).

    ``lookahead``: extra slots a decode step needs per sequence (the speculative draft);
    ``prefill_extra``: extra slots a prefill chunk needs (0).
    """

    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 lookahead: int = 0) -> None:
        self.blocks = blocks
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        self.lookahead = lookahead
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # ---------------------------------------------------------------- scheduling
    def schedule(self) -> Batch | None:
        """The next step's batch, or None when there is nothing to run."""
        batch = self._schedule_prefill()
        if batch is not None:
            return batch
        return self._schedule_decode()

    def _schedule_prefill(self) -> Batch | None:
        budget = self.max_num_batched_tokens
        seqs, num_new = [], []
        preempted_before = self.num_preemptions
        for seq in list(self.running):  # chunked prefills in progress
            if seq.status is not Status.RUNNING or seq.num_uncomputed <= 1 or budget <= 0:
                continue
            n = min(seq.num_uncomputed, budget)
            if self._reserve(seq, seq.num_computed_tokens + n):
                seqs.append(seq)
                num_new.append(n)
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            if self.num_preemptions != preempted_before:
                # a chunk above ran out of blocks and preempted (maybe itself): admitting now
                # would take those blocks straight back, from token 0 without a prefix cache,
                # and the decodes holding the rest would never run (a livelock); let them
                break
            seq = self.waiting[0]
            if _waits_for_parent(seq) or not self._admit(seq, budget):
                break
            self.waiting.popleft()
            self.running.append(seq)
            seqs.append(seq)
            num_new.append(min(seq.num_uncomputed, budget))
            budget -= num_new[-1]
        if not seqs:
            return None
        return Batch(True, seqs, num_new)

    def _admit(self, seq: Sequence, budget: int) -> bool:
        """Take the cached prefix and blocks for the first chunk; False (nothing held) if
        the blocks are not there."""
        cached = self.blocks.match_prefix(seq)
        seq.num_computed_tokens = cached
        n = min(seq.num_uncomputed, budget)
        if not self.blocks.allocate(seq, cached + n):
            self.blocks.free_seq(seq)
            seq.num_computed_tokens = 0
            return False
        if seq.num_cached_tokens is None:  # the first admission that holds: what is billed
            seq.num_cached_tokens = cached
        seq.status = Status.RUNNING
        return True

    def _schedule_decode(self) -> Batch | None:
        seqs = []
        for seq in list(self.running):
            if seq.status is Status.RUNNING and self._reserve(seq, seq.num_tokens + self.lookahead):
                assert seq.num_uncomputed == 1, "decode step with an unfinished prefill"
                seqs.append(seq)
        if not seqs:
            return None
        return Batch(False, seqs, [1 + self.lookahead] * len(seqs))

    def _reserve(self, seq: Sequence, num_tokens: int) -> bool:
        """Blocks for ``num_tokens`` slots of running ``seq``, preempting the most recently
        admitted sequences (possibly ``seq`` itself, then False) until they fit."""
        while not self.blocks.allocate(seq, num_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    # ---------------------------------------------------------------- state changes
    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and put it back at the front of the waiting queue."""
        self.running.remove(seq)
        self.blocks.free_seq(seq)
        seq.num_computed_tokens = 0
        seq.status = Status.WAITING
        seq.draft = None
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Mark ``seq`` finished (its ``finish_reason`` set by the caller) and free it."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED
        self.blocks.free_seq(seq)


def _waits_for_parent(seq: Sequence) -> bool:
    """Samples 1..n-1 wait until sample 0 has computed (and cached) the prompt."""
    parent = seq.parent
    return (parent is not None and parent.status is not Status.FINISHED
            and parent.num_computed_tokens < parent.num_prompt_tokens)
