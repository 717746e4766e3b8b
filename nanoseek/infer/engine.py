"""The step-wise engine: ``add_request`` / ``step`` / ``abort`` with incremental outputs.

``LLMEngine`` owns the cache tensors, the block manager, the scheduler and the model runner.
Each ``step()`` runs one scheduled batch (a prefill or a decode step, see ``scheduler``),
samples, detokenizes, checks stop conditions and returns a ``RequestOutput`` for every request
that changed, with the new text/ids since the previous step (``delta_text``,
``delta_token_ids``) and everything so far (``text``, ``token_ids``). ``add_request`` and
``abort`` only queue work (under a lock), so an asyncio server can call them from its event
loop while a background thread drives ``step()``.

Context rule: a request's prompt plus its output fit in ``max_model_len`` tokens. A prompt of
``max_model_len`` tokens or more is rejected (``ValueError``) by ``add_request``; ``max_tokens``
is clipped to ``max_model_len - len(prompt)`` (``None`` means exactly that), and hitting the
clip finishes with ``finish_reason="length"``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch
from torch import nn

from nanoseek.infer.cache import BlockManager, KVCacheStorage, LatentCacheStorage
from nanoseek.infer.detok import IncrementalDetokenizer
from nanoseek.infer.runner import ModelRunner
from nanoseek.infer.sampling import SamplerState, SamplingParams, sample
from nanoseek.infer.scheduler import Batch, Scheduler, Sequence, Status

DEFAULT_KV_CACHE_MEMORY = 256 * 2**20


@dataclass
class CompletionOutput:
    """One sample of a request. ``finish_reason``: None while running, ``stop``, ``length``
    or ``abort``; ``stop_reason``: the stop token id or stop string that ended it.
    ``logprobs``: per generated token ``{token_id: logprob}`` (the sampled token first, then
    the top alternatives asked for), when the request asked for log-probs."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    """A request's state after a step. ``num_cached_tokens``: prompt tokens served from the
    prefix cache (full blocks only; hit + miss = ``prompt_tokens``)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence]


class LLMEngine:
    """Continuous-batching engine over a paged (latent or GQA) KV cache.

    ``model``: a nanoseek ``DeepseekV3ForCausalLM`` or ``DenseForCausalLM`` (eval mode).
    ``tokenizer``: a ``nanoseek.tokenizer.Tokenizer`` or None (then prompts must be token ids
    and outputs carry no text). The cache holds ``num_blocks`` blocks of ``block_size`` tokens,
    by default as many as fit in ``kv_cache_memory`` bytes; ``max_model_len`` defaults to
    ``min(max_position_embeddings, cache capacity)``. ``num_speculative_tokens=1`` turns on MTP
    speculative decoding (DeepSeek models with ``num_nextn_predict_layers >= 1``).
    """

    def __init__(
        self, model: nn.Module, tokenizer=None, *, block_size: int = 16,
        num_blocks: int | None = None, kv_cache_memory: int | None = None,
        max_model_len: int | None = None, max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048, enable_prefix_caching: bool = True,
        num_speculative_tokens: int = 0, logprobs_mode: str = "raw",
    ) -> None:
        self.model, self.tokenizer, self.config = model.eval(), tokenizer, model.config
        self.logprobs_mode = logprobs_mode
        self.spec_k = _check_speculative(self.config, num_speculative_tokens)
        storage_cls = LatentCacheStorage if self.config.is_deepseek else KVCacheStorage
        layers = self.config.num_hidden_layers + self.spec_k
        dtype, device = model.lm_head.weight.dtype, model.lm_head.weight.device
        per_token = storage_cls(self.config, layers, 1, 1, dtype, "meta").bytes_per_token
        if num_blocks is None:
            budget = kv_cache_memory or DEFAULT_KV_CACHE_MEMORY
            num_blocks = max(2, budget // (per_token * block_size))
        capacity = (num_blocks - 1) * block_size - self.spec_k
        self.max_model_len = _max_model_len(max_model_len, self.config, capacity, num_blocks)
        self.storage = storage_cls(self.config, layers, num_blocks, block_size, dtype, device)
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max_num_batched_tokens,
                                   lookahead=self.spec_k)
        self.runner = ModelRunner(model, self.storage, block_size)
        self.speculator = None
        if self.spec_k:
            from nanoseek.infer.speculative import MTPSpeculator

            self.speculator = MTPSpeculator(self)
        self.eos_token_ids = _eos_ids(self.config, tokenizer)
        self.requests: dict[str, _Request] = {}
        self._pending: list[_Request] = []
        self._aborts: list[str] = []
        self._lock = threading.Lock()
        self._seq_ids = itertools.count()

    # ---------------------------------------------------------------- public API
    def add_request(self, request_id: str, prompt: str | Seq[int],
                    params: SamplingParams | None = None) -> None:
        """Queue a request: ``prompt`` is text (needs a tokenizer) or token ids.

        Raises ``ValueError`` for an empty or over-long prompt, an id outside the vocabulary
        or a duplicate ``request_id``."""
        params = params or SamplingParams()
        text, ids = self._encode(prompt)
        with self._lock:
            if request_id in self.requests or any(r.request_id == request_id
                                                  for r in self._pending):
                raise ValueError(f"request_id {request_id!r} is already in use")
            self._pending.append(_Request(request_id, text, ids, params,
                                          self._make_seqs(request_id, ids, params)))

    def abort(self, request_id: str) -> None:
        """Stop a request and free its cache blocks at the start of the next step."""
        with self._lock:
            self._aborts.append(request_id)

    def has_unfinished(self) -> bool:
        with self._lock:
            return bool(self.requests or self._pending)

    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Run one batch; return the outputs of the requests that changed."""
        self._drain_queues()
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        finished: list[Sequence] = []
        if batch.prefill:
            self._prefill(batch, finished)
        elif self.speculator is not None:
            self.speculator.decode(batch, finished)
        else:
            self._decode(batch, finished)
        for seq in finished:
            self.scheduler.finish(seq)
        return self._outputs({seq.request_id for seq in batch.seqs})

    def stats(self) -> dict[str, float]:
        """Cache use, preemptions and (with MTP) the draft acceptance rate."""
        used = self.blocks.num_blocks - 1 - self.blocks.num_free_blocks
        out = {"num_blocks": self.blocks.num_blocks, "used_blocks": used,
               "num_preemptions": self.scheduler.num_preemptions,
               "kv_cache_bytes": self.storage.num_bytes,
               "kv_bytes_per_token": self.storage.bytes_per_token}
        if self.speculator is not None:
            out.update(self.speculator.stats())
        return out

    # ---------------------------------------------------------------- requests
    def _encode(self, prompt: str | Seq[int]) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: text needs a tokenizer; pass token ids or give the "
                                 "engine a tokenizer")
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        vocab = self.config.vocab_size
        if not ids:
            raise ValueError("prompt: empty; give at least one token")
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt: token ids must be in [0, {vocab}) (vocab_size)")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt: {len(ids)} tokens do not fit the context: max_model_len is "
                f"{self.max_model_len} tokens, prompt + output included; shorten the prompt "
                f"to at most {self.max_model_len - 1} tokens")
        return text, ids

    def _make_seqs(self, request_id: str, ids: list[int],
                   params: SamplingParams) -> list[Sequence]:
        room = self.max_model_len - len(ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        seqs: list[Sequence] = []
        for i in range(params.n):
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, ids, params.skip_special_tokens,
                                               params.stop, params.include_stop_str_in_output)
            seqs.append(Sequence(
                next(self._seq_ids), request_id, i, list(ids), len(ids), max_tokens,
                sampler=SamplerState(params, ids, self.eos_token_ids, sample_index=i),
                detok=detok, parent=seqs[0] if seqs else None,
                logprobs=[] if params.logprobs is not None else None))
        return seqs

    def _drain_queues(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            aborts, self._aborts = self._aborts, []
        for request in pending:
            self.requests[request.request_id] = request
            for seq in request.seqs:
                self.scheduler.add(seq)
        for request_id in aborts:
            request = self.requests.pop(request_id, None)
            for seq in request.seqs if request else []:
                if not seq.is_finished:
                    seq.finish_reason = "abort"
                    self.scheduler.finish(seq)

    # ---------------------------------------------------------------- steps
    def _prefill(self, batch: Batch, finished: list[Sequence]) -> None:
        seqs, counts = batch.seqs, batch.num_new
        starts = [s.num_computed_tokens for s in seqs]
        layout = self.runner.packed([s.block_table for s in seqs], starts, counts)
        ids = [t for s, st, n in zip(seqs, starts, counts, strict=True)
               for t in s.token_ids[st : st + n]]
        input_ids = torch.tensor([ids], device=self.runner.device)
        h_ND = self.runner.hidden(input_ids, layout, "expanded")[0]
        ends = list(itertools.accumulate(counts))
        for seq, n in zip(seqs, counts, strict=True):
            seq.num_computed_tokens += n
            self.blocks.register(seq)
        done = [i for i, s in enumerate(seqs) if s.num_computed_tokens == s.num_tokens]
        if done:
            logits = self.runner.logits(h_ND[[ends[i] - 1 for i in done]])
            self.sample_and_append([seqs[i] for i in done], logits, finished)
        if self.speculator is not None:
            self.speculator.prefill(batch, starts, h_ND, layout, done, finished)

    def _decode(self, batch: Batch, finished: list[Sequence]) -> None:
        seqs = batch.seqs
        layout = self.runner.padded([s.block_table for s in seqs],
                                    [s.num_computed_tokens for s in seqs], [1] * len(seqs), 1)
        input_ids = torch.tensor([[s.token_ids[-1]] for s in seqs], device=self.runner.device)
        h_BTD = self.runner.hidden(input_ids, layout, "absorbed")
        for seq in seqs:
            seq.num_computed_tokens += 1
            self.blocks.register(seq)
        self.sample_and_append(seqs, self.runner.logits(h_BTD[:, 0]), finished)

    def sample_and_append(self, seqs: list[Sequence], logits_BV: torch.Tensor,
                          finished: list[Sequence]) -> list[int]:
        """Sample one token per row for ``seqs`` and append it; returns the tokens."""
        result = sample(logits_BV, [s.sampler for s in seqs], self.logprobs_mode)
        tokens = result.token_ids.tolist()
        want = [s.logprobs is not None for s in seqs]
        logprobs = result.logprobs.tolist() if any(want) else None
        top = None
        if result.top_logprobs is not None:
            top = (result.top_logprobs[0].tolist(), result.top_logprobs[1].tolist())
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            entry = None
            if want[i]:
                entry = {token: logprobs[i]}  # type: ignore[index]
                k = seq.sampler.params.logprobs or 0
                if top is not None and k:
                    entry.update(zip(top[0][i][:k], top[1][i][:k], strict=True))
            self.append_token(seq, token, entry, finished)
        return tokens

    def append_token(self, seq: Sequence, token: int, logprob: dict[int, float] | None,
                     finished: list[Sequence]) -> bool:
        """Append one generated token and check every stop condition; True if it ended."""
        seq.token_ids.append(token)
        seq.new_token_ids.append(token)
        if seq.logprobs is not None and logprob is not None:
            seq.logprobs.append(logprob)
        reason = seq.sampler.append(token)
        stop_reason: int | str | None = seq.sampler.stop_reason
        if seq.detok is not None:
            self._add_text(seq, seq.detok.add([token]))
            if seq.detok.stopped:
                reason, stop_reason = "stop", seq.detok.stop_reason
        if reason is None and len(seq.token_ids) - seq.num_prompt_tokens >= seq.max_tokens:
            reason = "length"
        if reason is None:
            return False
        seq.finish_reason, seq.stop_reason = reason, stop_reason
        if seq.detok is not None:
            self._add_text(seq, seq.detok.finish())
        finished.append(seq)
        return True

    @staticmethod
    def _add_text(seq: Sequence, delta: str) -> None:
        seq.text += delta
        seq.new_text += delta

    # ---------------------------------------------------------------- outputs
    def _outputs(self, request_ids: set[str]) -> list[RequestOutput]:
        outs = []
        for request_id, request in list(self.requests.items()):
            if request_id not in request_ids:
                continue
            outs.append(_request_output(request))
            if outs[-1].finished:
                del self.requests[request_id]
        return outs


def _request_output(request: _Request) -> RequestOutput:
    completions = []
    for seq in request.seqs:
        completions.append(CompletionOutput(
            seq.index, seq.text, seq.output_ids, seq.finish_reason, seq.stop_reason,
            list(seq.logprobs) if seq.logprobs is not None else None,
            seq.new_text, seq.new_token_ids))
        seq.new_text, seq.new_token_ids = "", []
    first = request.seqs[0]
    return RequestOutput(request.request_id, request.prompt, request.prompt_token_ids,
                         completions, all(s.status is Status.FINISHED for s in request.seqs),
                         first.num_cached_tokens or 0)


def _eos_ids(config, tokenizer) -> list[int]:
    ids = list(config.eos_token_ids)
    if tokenizer is not None and tokenizer.eos_id is not None and tokenizer.eos_id not in ids:
        ids.append(tokenizer.eos_id)
    return ids


def _check_speculative(config, k: int) -> int:
    if k not in (0, 1):
        raise ValueError(f"num_speculative_tokens: {k} is not supported; use 0 (off) or 1 "
                         "(one MTP draft per step, as DeepSeek-V3 serves)")
    if k and not (config.is_deepseek and config.num_nextn_predict_layers >= 1):
        raise ValueError("num_speculative_tokens: MTP speculative decoding needs a DeepSeek "
                         "model with num_nextn_predict_layers >= 1; set it to 0")
    return k


def _max_model_len(requested: int | None, config, capacity: int, num_blocks: int) -> int:
    limit = config.max_position_embeddings
    if requested is None:
        return max(2, min(limit, capacity))
    if requested > limit:
        raise ValueError(f"max_model_len: {requested} exceeds the model's "
                         f"max_position_embeddings ({limit}); use at most {limit}")
    if requested > capacity:
        raise ValueError(f"max_model_len: {requested} tokens do not fit the KV cache "
                         f"({num_blocks} blocks hold {capacity}); raise num_blocks or "
                         "kv_cache_memory, or lower max_model_len")
    return requested
