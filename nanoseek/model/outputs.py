"""What a causal LM forward returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RouterStats:
    """Routing of one MoE layer for one forward.

    ``counts [E]``: tokens sent to each routed expert (int64, for bias balancing).
    ``scores_TE``: the normalized affinity scores s (for the sequence-wise balance loss).
    ``topk_idx_TK``: the selected experts of each token.
    """

    layer_idx: int
    counts: torch.Tensor
    scores_TE: torch.Tensor
    topk_idx_TK: torch.Tensor


@dataclass
class CausalLMOutput:
    """``logits [B, T, V]``; optional final hidden states ``[B, T, D]`` (after the final norm
    for dense models, before it for DeepSeek so MTP can consume them), MTP logits (one
    ``[B, T, V]`` per depth k; position t predicts token t + 1 + k) and router statistics."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    router_stats: list[RouterStats] = field(default_factory=list)
