"""Multi-head Latent Attention (DeepSeek-V2/V3).

Per token, the keys and values of all heads come from one small latent
``c_kv = kv_a_layernorm(kv_a_proj_with_mqa(x)[:kv_lora_rank])`` plus one RoPE key ``k_pe``
shared by all heads: that pair (``kv_lora_rank + qk_rope_head_dim`` values, 576 for V3) is all
a cache must hold.

Two ways to attend, kept equal by tests:

* **expanded** (training, prefill): ``kv_b_proj`` expands the latent into per-head
  ``k_nope [H, n]`` and ``v [H, v]``; ordinary attention over ``q = [q_nope ; q_pe]``.
* **absorbed** (decode): ``W_UK`` (the k rows of ``kv_b_proj``) is folded into the query,
  ``q_lat = q_nope · W_UK`` ``[H, C]``, so scores are ``q_lat · c_kv + q_pe · k_pe`` straight
  against the cached latent, and ``W_UV`` is applied after attention to the latent-space output.
  Attention then is MQA with one 576-wide key per token shared by every head.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig
from nanoseek.model.layers import RMSNorm, apply_rope_half, apply_rope_interleaved


class LatentCache(Protocol):
    """What an attention layer needs from a KV cache (the engine provides paged ones)."""

    def update(
        self, layer_idx: int, c_kv_BTC: torch.Tensor, k_pe_BTR: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new latents; return all latents visible to these queries ``[B, S, ·]``."""
        ...


class MultiHeadLatentAttention(nn.Module):
    """``self_attn`` of a DeepSeek decoder layer (HF names)."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.kv_rank = config.v_head_dim, config.kv_lora_rank
        self.scale = config.softmax_scale()
        d, h, bias = config.hidden_size, config.num_attention_heads, config.attention_bias
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(d, h * config.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank)
            self.q_b_proj = nn.Linear(config.q_lora_rank, h * config.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.kv_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_rank)
        self.kv_b_proj = nn.Linear(self.kv_rank, h * (self.nope_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(h * self.v_dim, d, bias=bias)
        self._rope = apply_rope_interleaved if config.rope_interleave else apply_rope_half

    # ------------------------------------------------------------------ projections
    def project_q(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Queries: ``q_nope [B, H, T, n]`` and rotated ``q_pe [B, H, T, r]``."""
        b, t, _ = x_BTD.shape
        if self.config.q_lora_rank is None:
            q = self.q_proj(x_BTD)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BTD)))
        q_BHTd = q.view(b, t, self.n_heads, -1).transpose(1, 2)
        q_nope, q_pe = q_BHTd.split([self.nope_dim, self.rope_dim], dim=-1)
        return q_nope, self._rope(q_pe, cos, sin)

    def project_latent(self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """What the cache stores: normed latent ``c_kv [B, T, C]``, rotated ``k_pe [B, T, r]``."""
        c_kv, k_pe = self.kv_a_proj_with_mqa(x_BTD).split([self.kv_rank, self.rope_dim], dim=-1)
        k_pe = self._rope(k_pe.unsqueeze(1), cos, sin).squeeze(1)
        return self.kv_a_layernorm(c_kv), k_pe

    def _kv_b_heads(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``W_UK [H, n, C]`` and ``W_UV [H, v, C]`` views of ``kv_b_proj.weight``."""
        w = self.kv_b_proj.weight.view(self.n_heads, self.nope_dim + self.v_dim, self.kv_rank)
        return w[:, : self.nope_dim], w[:, self.nope_dim :]

    # ------------------------------------------------------------------ attention paths
    def attend_expanded(self, q_nope, q_pe, c_kv_BSC, k_pe_BSR, mask) -> torch.Tensor:
        """Per-head K/V from the latent, then SDPA.

        ``mask`` bool ``[B|1, 1, T, S]``; returns ``[B, T, H, v]``."""
        b, s, _ = c_kv_BSC.shape
        kv = self.kv_b_proj(c_kv_BSC).view(b, s, self.n_heads, -1).transpose(1, 2)
        k_nope, v_BHSv = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_pe = k_pe_BSR.unsqueeze(1).expand(b, self.n_heads, s, self.rope_dim)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe], dim=-1)
        v_dim, qk_dim = self.v_dim, q.shape[-1]
        if v_dim < qk_dim:  # torch's fused CPU kernel wants one head dim: pad v, slice after
            v_BHSv = F.pad(v_BHSv, (0, qk_dim - v_dim))
        out = F.scaled_dot_product_attention(q, k, v_BHSv, attn_mask=mask, scale=self.scale)
        return out[..., :v_dim].transpose(1, 2)

    def attend_absorbed(self, q_nope, q_pe, c_kv_BSC, k_pe_BSR, mask) -> torch.Tensor:
        """Attend over the latent itself: MQA with one (C + r)-wide key per token.

        The H heads are folded into the query rows (``[B, 1, H·T, ·]``) so the single shared
        key/value is never expanded over heads. → ``[B, T, H, v]``."""
        w_uk, w_uv = self._kv_b_heads()
        b, h, t, _ = q_nope.shape
        q_lat_BHTC = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)
        q = torch.cat([q_lat_BHTC, q_pe], dim=-1).reshape(b, 1, h * t, -1)
        k = torch.cat([c_kv_BSC, k_pe_BSR], dim=-1).unsqueeze(1)
        # the value is the latent, the key's first C columns: attending with v = k (one head
        # dim, so torch's fused kernel applies) and keeping the first C output columns is exact
        m = mask if t == 1 else mask.expand(b, 1, t, mask.shape[-1]).repeat(1, 1, h, 1)
        o = F.scaled_dot_product_attention(q, k, k, attn_mask=m, scale=self.scale)
        o_BHTC = o[..., : self.kv_rank].reshape(b, h, t, -1)
        return torch.einsum("bhtc,hvc->bthv", o_BHTC, w_uv)

    def attend_reference(self, q_nope, q_pe, c_kv_BSC, k_pe_BSR, mask) -> torch.Tensor:
        """Plain-math absorbed attention (explicit einsums, fp32 softmax), for tests."""
        w_uk, w_uv = self._kv_b_heads()
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)
        scores = torch.einsum("bhtc,bsc->bhts", q_lat, c_kv_BSC)
        scores = (scores + torch.einsum("bhtr,bsr->bhts", q_pe, k_pe_BSR)) * self.scale
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(q_nope.dtype)
        o_lat = torch.einsum("bhts,bsc->bhtc", probs, c_kv_BSC)
        return torch.einsum("bhtc,hvc->bthv", o_lat, w_uv)

    def forward(
        self,
        x_BTD: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor,
        cache: LatentCache | None = None,
        attn_impl: str = "expanded",
    ) -> torch.Tensor:
        """``x [B, T, D]`` → ``[B, T, D]``. ``attn_impl``: expanded | absorbed | reference."""
        q_nope, q_pe = self.project_q(x_BTD, cos, sin)
        c_kv, k_pe = self.project_latent(x_BTD, cos, sin)
        if cache is not None:
            c_kv, k_pe = cache.update(self.layer_idx, c_kv, k_pe)
        attend = {"expanded": self.attend_expanded, "absorbed": self.attend_absorbed,
                  "reference": self.attend_reference}.get(attn_impl)
        if attend is None:
            raise ValueError(f"attn_impl: unknown {attn_impl!r}; use expanded|absorbed|reference")
        out_BTHv = attend(q_nope, q_pe, c_kv, k_pe, mask)
        return self.o_proj(out_BTHv.reshape(*x_BTD.shape[:2], -1))
