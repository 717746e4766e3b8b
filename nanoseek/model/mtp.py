"""Multi-token prediction (DeepSeek-V3 §2.2).

MTP module k (k = 1..D) sits at ``model.layers.{num_hidden_layers + k - 1}`` in HF checkpoints.
For position i it combines the previous depth's hidden state ``h^{k-1}_i`` with the embedding
of token ``t_{i+k}``:

    h'_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)])      (embedding first, as served)
    h^k_i = DecoderLayer(h'_i)      logits^k_i = lm_head(shared_head.norm(h^k_i))

so logits^k_i predicts token ``t_{i+k+1}``. The embedding and output head are the main
model's (the release checkpoints store copies, which loading skips).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.block import DeepseekDecoderLayer
from nanoseek.model.layers import RMSNorm


class SharedHead(nn.Module):
    """``shared_head``: only its norm is owned; the head itself is the main ``lm_head``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPLayer(DeepseekDecoderLayer):
    """A decoder layer plus ``enorm``, ``hnorm``, ``eh_proj`` and ``shared_head.norm``."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx, moe=config.n_routed_experts > 0)
        d = config.hidden_size
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.shared_head = SharedHead(config)

    def combine(self, h_BTD: torch.Tensor, emb_BTD: torch.Tensor) -> torch.Tensor:
        """``eh_proj([enorm(emb) ; hnorm(h)])`` → ``[B, T, D]``."""
        return self.eh_proj(torch.cat([self.enorm(emb_BTD), self.hnorm(h_BTD)], dim=-1))


def shift_left(x: torch.Tensor, k: int, fill: int | float = 0) -> torch.Tensor:
    """``x[:, k:]`` padded with ``fill`` at the end so dim 1 keeps its length."""
    if k == 0:
        return x
    pad = x.new_full((x.shape[0], k, *x.shape[2:]), fill)
    return torch.cat([x[:, k:], pad], dim=1)
