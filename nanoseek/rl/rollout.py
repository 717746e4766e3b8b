"""Rollouts for GRPO: the rollout-engine interface, the local nanoseek engine behind it, the
prompt pool that hands out each step's prompts, and the padded training batch.

**Interface.** A rollout engine is anything with ``nanoseek.infer.LLM.generate``'s shape
(``generate(prompts, sampling_params) -> [RequestOutput]`` whose ``.outputs[j]`` carry
``token_ids``, ``logprobs`` and ``finish_reason``; vLLM's ``LLM`` has it too) plus
``load_weights(policy)``, which GRPO calls before every generation (rollouts and evaluation) so
the engine samples from the policy's *current* weights, and ``max_model_len``. The same object
is the ``Generator`` that ``nanoseek.eval.evaluate`` takes.

``LocalRolloutEngine`` is the nanoseek engine (``LLM`` with ``logprobs_mode="processed"``).
Single process or DDP: it wraps the policy module itself, so weights are shared, never copied.
FSDP2: it owns a full-weight twin that ``load_weights`` refills from the gathered state dict.
Either way ``load_weights`` then drops the engine's **prefix cache**: cached KV blocks were
computed with the old weights, and reusing them after an update would silently sample from a
mix of old and new policies.

**Batch.** Each completion becomes one right-padded row ``[prompt | completion | pad]``. Its
mask (over next-token positions, ``[B, T-1]``) covers the completion up to and including the
first end-of-sequence token and nothing after it; with ``mask_truncated`` a completion that hit
``max_tokens`` without one is masked out entirely (DAPO's overlong filtering).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from nanoseek.data.tasks import Problem
from nanoseek.distributed import is_fsdp, unwrap


@dataclass
class Rollout:
    """One sampled completion: ``token_ids`` as generated (EOS included when it stopped on
    one), the engine's log-prob of each (``None`` if it gave none), why it stopped, its text."""

    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: str | None
    text: str


class RolloutEngine(Protocol):
    """What GRPO needs from a generator (see the module docstring)."""

    tokenizer: Any
    max_model_len: int

    def load_weights(self, policy: nn.Module) -> None: ...
    def generate(self, prompts: list[list[int]], sampling_params: list[Any]) -> list[Any]: ...


class LocalRolloutEngine:
    """The nanoseek ``LLM`` over the policy's weights (shared, or an FSDP2 twin refilled on
    ``load_weights``). ``engine_kwargs`` go to ``LLMEngine`` (``kv_cache_memory``,
    ``max_num_seqs``, ``max_num_batched_tokens``, ...)."""

    def __init__(self, policy: nn.Module, tokenizer: Any, **engine_kwargs: Any) -> None:
        from nanoseek.infer import LLM

        self.shared = not is_fsdp(policy)
        module = unwrap(policy)
        if not self.shared:
            from nanoseek.model import build_model

            with torch.device(next(policy.parameters()).device):
                module = build_model(module.config)
            module.requires_grad_(False)
        self.llm = LLM(module, tokenizer, logprobs_mode="processed", **engine_kwargs)
        self.tokenizer = tokenizer
        self.max_model_len = self.llm.engine.max_model_len

    @property
    def engine(self) -> Any:
        return self.llm.engine

    @staticmethod
    def _full_state(policy: nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict on every rank (a collective under FSDP2)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True))

    @torch.no_grad()
    def load_weights(self, policy: nn.Module) -> None:
        """Make the engine sample from ``policy``'s current weights; drop the prefix cache."""
        if not self.shared:
            self.llm.model.load_state_dict(self._full_state(policy))
        self.llm.engine.blocks.reset_prefix_cache()

    def generate(self, prompts: list[list[int]], sampling_params: list[Any]) -> list[Any]:
        self.llm.model.eval()
        return self.llm.generate(prompts, sampling_params)


# -------------------------------------------------------------------- outputs → rollouts
def _logprob_value(entry: Any) -> float:
    return float(getattr(entry, "logprob", entry))  # vLLM wraps values in Logprob objects


def to_rollouts(prompts: Sequence[list[int]], outputs: Sequence[Any]) -> list[list[Rollout]]:
    """``[prompt][sample]`` rollouts from a ``generate`` result (one output per prompt)."""
    if len(outputs) != len(prompts):
        raise RuntimeError(f"the rollout engine returned {len(outputs)} outputs for "
                           f"{len(prompts)} prompts")
    groups = []
    for prompt, out in zip(prompts, outputs, strict=True):
        group = []
        for o in out.outputs:
            ids = list(o.token_ids)
            lps = None
            if o.logprobs is not None:
                lps = [_logprob_value(d[t]) for d, t in zip(o.logprobs, ids, strict=True)]
            group.append(Rollout(list(prompt), ids, lps, o.finish_reason, o.text))
        groups.append(group)
    return groups


# -------------------------------------------------------------------- the padded batch
def completion_length(token_ids: Sequence[int], eos_ids: Sequence[int]) -> int:
    """Tokens of a completion that train: up to and including the first EOS, else all."""
    for i, t in enumerate(token_ids):
        if t in eos_ids:
            return i + 1
    return len(token_ids)


@dataclass
class PaddedBatch:
    """Right-padded rows ``input_ids [B, T]`` with ``mask [B, T-1]`` (1.0 on next-token
    positions that are completion tokens), the engine's log-probs there ``rollout_logp
    [B, T-1]`` (0 where it gave none) and each row's trained completion length."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    rollout_logp: torch.Tensor
    lengths: list[int]


def collate(rollouts: Sequence[Rollout], pad_id: int, eos_ids: Sequence[int],
            mask_truncated: bool = False) -> PaddedBatch:
    """One right-padded row per rollout (see the module docstring for the mask rule)."""
    rows, spans, lengths = [], [], []
    for r in rollouts:
        keep = completion_length(r.token_ids, eos_ids)
        no_eos = not r.token_ids or r.token_ids[keep - 1] not in eos_ids
        rows.append(r.prompt_ids + r.token_ids[:keep])
        spans.append((len(r.prompt_ids) - 1, 0 if mask_truncated and no_eos else keep,
                      r.logprobs))
        lengths.append(keep)
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    logp = torch.zeros(len(rows), width - 1)
    for b, (row, (start, n, lps)) in enumerate(zip(rows, spans, strict=True)):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, start : start + n] = 1.0
        if lps is not None and n:
            logp[b, start : start + n] = torch.tensor(lps[:n])
    return PaddedBatch(ids, mask, logp, lengths)


# -------------------------------------------------------------------- the prompt pool
class PromptPool:
    """Training problems with their prompt ids, handed out ``per_step`` at a time.

    The order is a fresh seeded permutation of the pool each epoch, so step ``k``'s prompts
    (and their sampling seeds) are a pure function of ``(seed, k)``: a resumed run draws what
    an uninterrupted one would. Rank ``r`` of ``world`` takes prompts ``r, r + world, ...`` of
    each step; all samples of a prompt stay on one rank, so groups are never split.
    """

    def __init__(self, problems: Sequence[Problem], prompts: Sequence[list[int]], per_step: int,
                 seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if not problems:
            raise ValueError("data.tasks: no training prompt fits the model's context")
        self.problems, self.prompts = list(problems), [list(p) for p in prompts]
        self.per_step, self.seed, self.rank, self.world = per_step, seed, rank, world
        self.step = 0
        self._orders: dict[int, list[int]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.problems)))
            random.Random(f"nanoseek/grpo/{self.seed}/{epoch}").shuffle(order)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def next_batch(self) -> tuple[list[Problem], list[list[int]], list[int]]:
        """This rank's ``(problems, prompt ids, global slots)`` of the next step; a slot
        ``step * per_step + j`` numbers the prompt within the whole run (it seeds sampling)."""
        n = len(self.problems)
        slots = [self.step * self.per_step + j for j in range(self.rank, self.per_step,
                                                               self.world)]
        picks = [self._order(s // n)[s % n] for s in slots]
        self.step += 1
        return ([self.problems[i] for i in picks], [self.prompts[i] for i in picks], slots)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "pool_size": len(self.problems)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("pool_size") != len(self.problems):
            raise ValueError(f"--resume: the checkpoint's prompt pool had "
                             f"{state.get('pool_size')} problems, this run builds "
                             f"{len(self.problems)}; resume with the same [data] settings")
        self.step = int(state["step"])
