"""One DeepSeek decoder layer: pre-norm MLA then pre-norm FFN (dense SwiGLU or DeepSeekMoE)."""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import RMSNorm, SwiGLU
from nanoseek.model.mla import LatentCache, MultiHeadLatentAttention
from nanoseek.model.moe import DeepseekMoE
from nanoseek.model.outputs import RouterStats


class DeepseekDecoderLayer(nn.Module):
    """``model.layers.{i}``: ``input_layernorm``, ``self_attn``, ``post_attention_layernorm``,
    ``mlp``."""

    def __init__(self, config: ModelConfig, layer_idx: int, moe: bool) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.self_attn = MultiHeadLatentAttention(config, layer_idx)
        self.mlp: nn.Module
        if moe:
            self.mlp = DeepseekMoE(config, layer_idx)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: LatentCache | None = None,
        attn_impl: str = "expanded",
        moe_reference: bool = False,
    ) -> tuple[torch.Tensor, RouterStats | None]:
        """``[B, T, D]`` → ``([B, T, D], router stats or None for a dense layer)``."""
        h = self.self_attn(self.input_layernorm(x_BTD), cos, sin, mask, cache, attn_impl)
        x_BTD = x_BTD + h
        normed = self.post_attention_layernorm(x_BTD)
        if isinstance(self.mlp, DeepseekMoE):
            y, stats = self.mlp(normed, reference=moe_reference)
            return x_BTD + y, stats
        return x_BTD + self.mlp(normed), None
