"""Sampling: per-request parameters, a batched sampler and the speculative acceptance rule.

``SamplingParams`` uses vLLM's names. The engine keeps one ``SamplerState`` per running sequence
(its params, its own ``torch.Generator`` and the counts of its output tokens) and calls
``sample(logits_BV, states)`` once per step. The logit processing is vectorized over the batch,
in this order (HF/vLLM semantics for each step):

1. ``min_tokens``: EOS and ``stop_token_ids`` are masked until ``min_tokens`` are generated.
2. Repetition penalty (HF's rule, over prompt + output tokens), then frequency and presence
   penalties (OpenAI's rule, over output tokens): ``l - f * count - p * (count > 0)``.
3. Temperature. Below ``GREEDY_TEMPERATURE`` a row is greedy: argmax, ties to the lowest id,
   penalties applied; it is processed at temperature 1 (for ``processed`` log-probs).
4. Top-k (ties at the k-th value kept), top-p (smallest set with mass >= top_p), min-p
   (drop tokens with probability < min_p * max probability), in HF's order.

The draw is an exponential race, ``argmax(probs / E)`` with ``E ~ Exp(1)`` per token, an exact
categorical sample (nano-vllm and DeepSeek's ``generate.py`` use it too). Each row draws ``E``
from its own generator, so a request's tokens depend only on its seed and its own logits, never
on which other requests share the batch. A request without a seed gets a fresh random one
(``SamplerState.seed`` records it). For ``n > 1`` the engine makes one state per sample with
``sample_index=i``, seeded ``seed + i`` (as vLLM does).

Log-probs. ``logprobs_mode="raw"`` (the default, as in vLLM and the OpenAI API) reports
``log_softmax`` of the model's unprocessed logits. ``"processed"`` reports log-probs of the
distribution the token was drawn from (after penalties, temperature and truncation), which is
what GRPO's importance ratio needs when rollouts are sampled at a temperature.

Speculative decoding (MTP). The draft proposes ``x_1..x_k``; one target forward over
``[last, x_1..x_k]`` gives ``k + 1`` logit rows. Process them with ``process_logits`` using the
sequence's state on every row and ``pending=[x_1..x_{i-1}]`` for row ``i`` (so penalties count
the drafts before it), softmax them, and call ``speculative_accept`` (or
``speculative_accept_greedy`` for greedy rows, on the processed logits, which gives exactly the
tokens of plain greedy decoding). The rule preserves the sampling distribution, but it consumes
the generator differently from plain decoding, so a seeded request gives different (equally
distributed) tokens with and without speculation.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this are greedy decoding (vLLM's threshold)."""
MAX_LOGPROBS = 20
"""Most top log-prob alternatives per token (the OpenAI API limit)."""
LogprobsMode = Literal["raw", "processed"]
FinishReason = Literal["stop", "length"]


@dataclass
class SamplingParams:
    """How to sample one request (vLLM's names and defaults, OpenAI's penalty ranges).

    ``top_k`` 0 or -1 is off. ``max_tokens=None`` generates up to the context length.
    ``stop`` strings end the output (checked on the detokenized text, see
    ``nanoseek.infer.detok``); ``stop_token_ids`` end it on a token. ``logprobs``: None = no
    log-probs, 0 = the sampled token's only, k = plus the top-k alternatives. ``seed`` makes
    the request reproducible whatever else is in the batch (with MTP speculative decoding at
    T > 0, only given the same prefix-cache contents and no preemption: see
    ``nanoseek.infer.speculative``). ``top_k`` above the vocabulary keeps every token.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        _check_int("n", self.n, low=1)
        _check_float("temperature", self.temperature, low=0.0, hint="0 = greedy")
        _check_float("top_p", self.top_p, low=0.0, high=1.0, low_open=True, hint="1 = off")
        _check_int("top_k", self.top_k, low=-1, hint="0 or -1 = off")
        _check_float("min_p", self.min_p, low=0.0, high=1.0, hint="0 = off")
        _check_float("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        _check_float("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        _check_float("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True,
                     hint="1 = off")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1, hint="None = up to the context")
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens={self.min_tokens} must be <= max_tokens="
                             f"{self.max_tokens}")
        for text in self.stop:
            if not isinstance(text, str) or not text:
                raise ValueError(f"stop must hold non-empty strings, got {text!r}")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, low=0)
        if self.seed is not None:
            _check_int("seed", self.seed)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_LOGPROBS,
                       hint="None = no log-probs, 0 = sampled token only")

    @property
    def greedy(self) -> bool:
        """True when sampling is greedy argmax (temperature below ``GREEDY_TEMPERATURE``)."""
        return self.temperature < GREEDY_TEMPERATURE


def _check_int(name: str, value: object, low: int | None = None, high: int | None = None,
               hint: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    _check_range(name, value, low, high, False, hint)


def _check_float(name: str, value: object, low: float | None = None, high: float | None = None,
                 low_open: bool = False, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    _check_range(name, value, low, high, low_open, hint)


def _check_range(name: str, value: float, low: float | None, high: float | None,
                 low_open: bool, hint: str) -> None:
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        lower = "" if low is None else f"{'>' if low_open else '>='} {low}"
        upper = "" if high is None else f"<= {high}"
        bounds = " and ".join(b for b in (lower, upper) if b)
        note = f" ({hint})" if hint else ""
        raise ValueError(f"{name}={value} is out of range: it must be {bounds}{note}")


class SamplerState:
    """Sampling state of one running sequence: params, generator, output token counts.

    ``eos_token_id`` (one id or several, as in ``generation_config.json``) is what ``min_tokens``
    masks and what ``append`` stops on unless ``ignore_eos``. The generator is created on the
    device of the first logits it samples from, seeded with ``seed``.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int] = (),
        eos_token_id: int | Sequence[int] | None = None,
        sample_index: int = 0,
    ) -> None:
        self.params = params
        self.prompt_token_ids = list(prompt_token_ids)
        if eos_token_id is None:
            self.eos_token_ids: list[int] = []
        elif isinstance(eos_token_id, int):
            self.eos_token_ids = [eos_token_id]
        else:
            self.eos_token_ids = list(eos_token_id)
        base = params.seed if params.seed is not None else secrets.randbits(63)
        self.seed = (base + sample_index) % 2**64
        self.output_token_ids: list[int] = []
        self.output_counts: Counter[int] = Counter()
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | None = None
        self._generator: torch.Generator | None = None
        self._prompt_unique: Tensor | None = None

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This sequence's generator on ``device`` (created and seeded on first use)."""
        device = torch.device(device)
        if device.type != "cpu" and device.index is None:
            device = torch.device(device.type, torch.get_device_module(device).current_device())
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def append(self, token_id: int) -> FinishReason | None:
        """Record a generated token; return ``"stop"``/``"length"`` when the sequence ends.

        ``"stop"``: an EOS id (unless ``ignore_eos``) or one of ``stop_token_ids`` (then
        ``stop_reason`` is that id), only once ``min_tokens`` are out. ``"length"``:
        ``max_tokens`` reached. The context limit is the engine's to check.
        """
        self.output_token_ids.append(token_id)
        self.output_counts[token_id] += 1
        params = self.params
        if len(self.output_token_ids) >= params.min_tokens:
            if token_id in params.stop_token_ids:
                self.finish_reason, self.stop_reason = "stop", token_id
            elif token_id in self.eos_token_ids and not params.ignore_eos:
                self.finish_reason = "stop"
        if self.finish_reason is None and params.max_tokens is not None \
                and len(self.output_token_ids) >= params.max_tokens:
            self.finish_reason = "length"
        return self.finish_reason

    def stop_token_ids(self) -> list[int]:
        """Ids that end the sequence (masked while fewer than ``min_tokens`` are out)."""
        eos = [] if self.params.ignore_eos else self.eos_token_ids
        return [*self.params.stop_token_ids, *eos]

    def counts_with(self, pending: Sequence[int]) -> Counter[int]:
        """Output token counts, plus ``pending`` tokens not yet appended (speculative drafts)."""
        return self.output_counts + Counter(pending) if pending else self.output_counts

    def prompt_unique_ids(self) -> Tensor:
        """Distinct prompt token ids (CPU, int64), cached: the repetition penalty's prompt part."""
        if self._prompt_unique is None:
            self._prompt_unique = torch.tensor(sorted(set(self.prompt_token_ids)),
                                               dtype=torch.long)
        return self._prompt_unique


class SampleResult(NamedTuple):
    """One sampled token per row, its log-prob and optionally the top alternatives.

    ``token_ids`` [B] int64; ``logprobs`` [B] fp32; ``top_logprobs`` = (ids [B, K] int64,
    values [B, K] fp32), sorted by value, ``K`` = the largest ``params.logprobs`` in the batch
    (slice each row to its own), or None when no row asked for alternatives.
    """

    token_ids: Tensor
    logprobs: Tensor
    top_logprobs: tuple[Tensor, Tensor] | None


def sample(logits_BV: Tensor, states: Sequence[SamplerState],
           logprobs_mode: LogprobsMode = "raw") -> SampleResult:
    """Sample one token per row of ``logits_BV`` [B, V] (fp32) with row ``b``'s ``states[b]``.

    Does not update the states: call ``state.append(token)`` for each token the engine keeps.
    ``logprobs_mode``: ``"raw"`` (model log-probs) or ``"processed"`` (log-probs of the
    distribution sampled from), see the module docstring.
    """
    if logprobs_mode not in ("raw", "processed"):
        raise ValueError(f"logprobs_mode={logprobs_mode!r} must be 'raw' or 'processed'")
    processed_BV = process_logits(logits_BV, states)
    greedy = [s.params.greedy for s in states]
    token_B = processed_BV.argmax(dim=-1)
    if not all(greedy):
        sampled_B = _exponential_race(processed_BV.softmax(dim=-1), states)
        token_B = torch.where(torch.tensor(greedy, device=token_B.device), token_B, sampled_B)
    source_BV = logits_BV.float() if logprobs_mode == "raw" else processed_BV
    logprobs_BV = source_BV.log_softmax(dim=-1)
    logprob_B = logprobs_BV.gather(1, token_B[:, None]).squeeze(1)
    top_k = max(s.params.logprobs or 0 for s in states)
    top = None
    if top_k > 0:
        values_BK, ids_BK = logprobs_BV.topk(min(top_k, logprobs_BV.shape[-1]), dim=-1)
        top = (ids_BK, values_BK)
    return SampleResult(token_B, logprob_B, top)


def process_logits(logits_BV: Tensor, states: Sequence[SamplerState],
                   pending: Sequence[Sequence[int]] | None = None) -> Tensor:
    """The logits each row samples from [B, V] fp32 (a new tensor; excluded tokens are -inf).

    Applies min_tokens, penalties, temperature (greedy rows: 1), top-k, top-p and min-p.
    ``pending[b]``: tokens to count as already generated for row ``b`` (speculative drafts).
    """
    if logits_BV.dim() != 2 or logits_BV.shape[0] != len(states):
        raise ValueError(f"logits_BV must be [B, V] with B = len(states) = {len(states)}, got "
                         f"shape {tuple(logits_BV.shape)}")
    pending = [()] * len(states) if pending is None else pending
    logits_BV = logits_BV.to(torch.float32, copy=True)
    params = [s.params for s in states]
    _mask_early_stops(logits_BV, states, pending)
    _apply_penalties(logits_BV, states, pending)
    temperatures = [1.0 if p.greedy else p.temperature for p in params]
    if any(t != 1.0 for t in temperatures):
        logits_BV.div_(_column(temperatures, logits_BV))
    vocab = logits_BV.shape[-1]
    top_k = [min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params]  # k > V: all
    top_p = [p.top_p if p.top_p < 1.0 else math.inf for p in params]
    if any(k < vocab for k in top_k) or any(p < math.inf for p in top_p):
        logits_BV = _apply_top_k_top_p(logits_BV, top_k, top_p)
    if any(p.min_p > 0 for p in params):
        probs_BV = logits_BV.softmax(dim=-1)
        floor_B1 = probs_BV.amax(dim=-1, keepdim=True) * _column([p.min_p for p in params],
                                                                 logits_BV)
        logits_BV.masked_fill_(probs_BV < floor_B1, -math.inf)
    return logits_BV


def _column(values: Sequence[float], like: Tensor) -> Tensor:
    """``values`` as a [B, 1] tensor with ``like``'s dtype and device."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)[:, None]


def _scatter_index(rows: list[int], ids: list[Tensor], device: torch.device
                   ) -> tuple[Tensor, Tensor]:
    """Concatenate per-row id tensors into (row index, token id) tensors on ``device``."""
    row_index = torch.cat([torch.full_like(i, r) for r, i in zip(rows, ids, strict=True)])
    return row_index.to(device), torch.cat(ids).to(device)


def _mask_early_stops(logits_BV: Tensor, states: Sequence[SamplerState],
                      pending: Sequence[Sequence[int]]) -> None:
    """Mask EOS and stop token ids (in place) in rows that still owe ``min_tokens`` tokens."""
    rows, ids = [], []
    for b, state in enumerate(states):
        if len(state.output_token_ids) + len(pending[b]) >= state.params.min_tokens:
            continue
        stop_ids = [i for i in state.stop_token_ids() if i < logits_BV.shape[-1]]
        if stop_ids:
            rows.append(b)
            ids.append(torch.tensor(stop_ids, dtype=torch.long))
    if rows:
        logits_BV[_scatter_index(rows, ids, logits_BV.device)] = -math.inf


def _apply_penalties(logits_BV: Tensor, states: Sequence[SamplerState],
                     pending: Sequence[Sequence[int]]) -> None:
    """Repetition, then frequency and presence penalties, in place, via per-row scatters."""
    params = [s.params for s in states]
    repeat_rows = [b for b, p in enumerate(params) if p.repetition_penalty != 1.0]
    if repeat_rows:
        ids = [torch.cat([states[b].prompt_unique_ids(),
                          torch.tensor(list(states[b].counts_with(pending[b])), dtype=torch.long)])
               for b in repeat_rows]
        seen_BV = torch.zeros_like(logits_BV, dtype=torch.bool)
        seen_BV[_scatter_index(repeat_rows, ids, logits_BV.device)] = True
        factor_B1 = _column([p.repetition_penalty for p in params], logits_BV)
        penalized_BV = torch.where(logits_BV > 0, logits_BV / factor_B1, logits_BV * factor_B1)
        logits_BV.copy_(torch.where(seen_BV, penalized_BV, logits_BV))
    count_rows = [b for b, p in enumerate(params) if p.frequency_penalty or p.presence_penalty]
    if count_rows:
        counts = [states[b].counts_with(pending[b]) for b in count_rows]
        ids = [torch.tensor(list(c), dtype=torch.long) for c in counts]
        counts_BV = torch.zeros_like(logits_BV)
        counts_BV[_scatter_index(count_rows, ids, logits_BV.device)] = torch.tensor(
            [n for c in counts for n in c.values()], dtype=logits_BV.dtype,
            device=logits_BV.device)
        logits_BV -= _column([p.frequency_penalty for p in params], logits_BV) * counts_BV
        logits_BV -= _column([p.presence_penalty for p in params], logits_BV) * (counts_BV > 0)


def _apply_top_k_top_p(logits_BV: Tensor, top_k: Sequence[int], top_p: Sequence[float]
                       ) -> Tensor:
    """Keep each row's top-k (ties kept) then the smallest top-p set; the rest become -inf."""
    sorted_BV, index_BV = logits_BV.sort(dim=-1, descending=True, stable=True)
    k_B1 = torch.tensor(top_k, device=logits_BV.device)[:, None]
    kth_B1 = sorted_BV.gather(1, k_B1 - 1)
    sorted_BV = sorted_BV.masked_fill(sorted_BV < kth_B1, -math.inf)
    probs_BV = sorted_BV.softmax(dim=-1)
    mass_before_BV = probs_BV.cumsum(dim=-1) - probs_BV
    remove_BV = mass_before_BV >= _column(top_p, probs_BV)
    remove_BV[:, 0] = False
    sorted_BV = sorted_BV.masked_fill(remove_BV, -math.inf)
    return torch.empty_like(logits_BV).scatter_(1, index_BV, sorted_BV)


def _exponential_race(probs_BV: Tensor, states: Sequence[SamplerState]) -> Tensor:
    """Row ``b``: ``argmax(probs / E)``, ``E ~ Exp(1)`` from ``states[b]``'s generator. [B].

    Greedy rows draw nothing (their entry is meaningless; ``sample`` uses the argmax).
    """
    size, device = probs_BV.shape[-1], probs_BV.device
    noise = [torch.ones(size, device=device) if s.params.greedy
             else _exponential(size, s.generator(device)) for s in states]
    return (probs_BV / torch.stack(noise)).argmax(dim=-1)


def _exponential(size: int, generator: torch.Generator) -> Tensor:
    """``size`` Exp(1) draws on the generator's device (clamped away from 0)."""
    noise = torch.empty(size, device=generator.device).exponential_(generator=generator)
    return noise.clamp_min_(torch.finfo(noise.dtype).tiny)


def _draw(weights_V: Tensor, generator: torch.Generator) -> int:
    """One token from unnormalized non-negative ``weights_V`` [V] (exponential race)."""
    noise_V = _exponential(weights_V.shape[-1], generator).to(weights_V.device)
    return int((weights_V / noise_V).argmax())


def speculative_accept(
    target_probs_KV: Tensor,
    draft_probs_KV: Tensor | None,
    draft_tokens_K: Sequence[int],
    bonus_probs_V: Tensor,
    generator: torch.Generator,
) -> tuple[list[int], int]:
    """Verify ``k`` draft tokens against the target; return (tokens to emit, drafts accepted).

    Leviathan et al. / Chen et al. rejection rule: accept draft ``x_i`` with probability
    ``min(1, p_i(x_i) / q_i(x_i))``; at the first rejection emit a token drawn from
    ``normalize(max(0, p_i - q_i))`` and stop; if all ``k`` pass, emit a bonus token drawn from
    ``bonus_probs_V`` (the target's next distribution). Every emitted token is distributed as
    the target's, whatever the draft. The emitted list has ``n_accepted + 1`` tokens.

    ``target_probs_KV`` / ``draft_probs_KV``: [k, V] processed probabilities (``draft_probs_KV``
    None = a deterministic draft, ``q`` one-hot). ``generator``: the sequence's; this draws
    ``k`` uniforms and one ``V``-vector of exponentials per call.
    """
    k = len(draft_tokens_K)
    if target_probs_KV.shape[0] != k or (draft_probs_KV is not None
                                         and draft_probs_KV.shape != target_probs_KV.shape):
        raise ValueError(f"target_probs_KV {tuple(target_probs_KV.shape)} and draft_probs_KV "
                         f"must be [k, V] with k = len(draft_tokens_K) = {k}")
    device = target_probs_KV.device
    tokens_K1 = torch.tensor(list(draft_tokens_K), dtype=torch.long, device=device)[:, None]
    p_K = target_probs_KV.gather(1, tokens_K1).squeeze(1)
    q_K = torch.ones_like(p_K) if draft_probs_KV is None else (
        draft_probs_KV.gather(1, tokens_K1).squeeze(1))
    u_K = torch.rand(k, generator=generator, device=generator.device).to(device)
    accepted_K = (u_K * q_K < p_K).long()  # u < p / q, safe for q = 0
    n_accepted = int(accepted_K.cumprod(dim=0).sum()) if k else 0
    if n_accepted == k:
        return [*draft_tokens_K, _draw(bonus_probs_V, generator)], k
    p_V = target_probs_KV[n_accepted]
    if draft_probs_KV is None:
        q_V = torch.zeros_like(p_V).scatter_(0, tokens_K1[n_accepted], 1.0)
    else:
        q_V = draft_probs_KV[n_accepted]
    residual_V = (p_V - q_V).clamp_min(0)
    if not bool(residual_V.sum() > 0):  # only by rounding: a rejection implies p > q somewhere
        residual_V = p_V
    return [*draft_tokens_K[:n_accepted], _draw(residual_V, generator)], n_accepted


def speculative_accept_greedy(
    target_logits_KV: Tensor, draft_tokens_K: Sequence[int], bonus_logits_V: Tensor
) -> tuple[list[int], int]:
    """Greedy verification: accept drafts while each equals the target's argmax.

    On the first mismatch emit the target's argmax; if all match, emit the argmax of
    ``bonus_logits_V``. Pass the processed logits (``process_logits``) so the tokens equal plain
    greedy decoding's exactly. Returns (tokens to emit, drafts accepted).
    """
    k = len(draft_tokens_K)
    if target_logits_KV.shape[0] != k:
        raise ValueError(f"target_logits_KV {tuple(target_logits_KV.shape)} must be [k, V] "
                         f"with k = len(draft_tokens_K) = {k}")
    best = target_logits_KV.argmax(dim=-1).tolist() if k else []
    n_accepted = 0
    while n_accepted < k and draft_tokens_K[n_accepted] == best[n_accepted]:
        n_accepted += 1
    last = best[n_accepted] if n_accepted < k else int(bonus_logits_V.argmax())
    return [*draft_tokens_K[:n_accepted], last], n_accepted
