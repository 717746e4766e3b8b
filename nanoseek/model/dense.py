"""Dense Llama / Qwen2 causal LMs with grouped-query attention (the DeepSeek-R1-Distill students).

Module names are the HF checkpoint keys, so a ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` state
dict loads by identity. The two families differ only in their projection biases:

* Qwen2: q/k/v always have biases, o_proj never does; the MLP has none.
* Llama: ``attention_bias`` switches all four attention biases, ``mlp_bias`` the MLP's.

Shapes: B batch, T query length, S key/value length, D hidden size, H query heads,
K key/value heads (H % K == 0), d head dim, V vocab.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.checkpoint import PretrainedMixin
from nanoseek.config import ModelConfig
from nanoseek.model.layers import (
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    apply_rope_half,
    causal_mask,
)
from nanoseek.model.outputs import CausalLMOutput


class KVCache(Protocol):
    """What a GQA layer needs from a KV cache (the inference engine provides paged ones)."""

    def update(
        self, layer_idx: int, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values; return all keys/values visible to these queries
        ``[B, K, S, d]``."""
        ...


# -------------------------------------------------------------------- attention math
def repeat_kv(x_BKSd: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Expand ``[B, K, S, d]`` to ``[B, K * n_rep, S, d]`` (kv head k serves query heads
    k * n_rep ... k * n_rep + n_rep - 1)."""
    if n_rep == 1:
        return x_BKSd
    b, k, s, d = x_BKSd.shape
    return x_BKSd[:, :, None].expand(b, k, n_rep, s, d).reshape(b, k * n_rep, s, d)


def reference_attention(
    q_BHTd: torch.Tensor, k_BKSd: torch.Tensor, v_BKSd: torch.Tensor, mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Plain-math GQA: softmax(q k^T * scale, masked) v, softmax in float32.

    ``mask`` is boolean ``[B or 1, 1, T, S]``, True where attention is allowed (every row
    must allow at least one key). Returns ``[B, H, T, d]`` in the dtype of ``q``.
    """
    n_rep = q_BHTd.shape[1] // k_BKSd.shape[1]
    k_BHSd, v_BHSd = repeat_kv(k_BKSd, n_rep), repeat_kv(v_BKSd, n_rep)
    scores_BHTS = (q_BHTd.float() @ k_BHSd.float().transpose(-1, -2)) * scale
    scores_BHTS = scores_BHTS.masked_fill(~mask, float("-inf"))
    probs_BHTS = scores_BHTS.softmax(dim=-1)
    return (probs_BHTS @ v_BHSd.float()).to(q_BHTd.dtype)


def sdpa_attention(
    q_BHTd: torch.Tensor, k_BKSd: torch.Tensor, v_BKSd: torch.Tensor, mask: torch.Tensor,
    scale: float, dropout_p: float = 0.0,
) -> torch.Tensor:
    """Same as :func:`reference_attention` through ``F.scaled_dot_product_attention``."""
    n_rep = q_BHTd.shape[1] // k_BKSd.shape[1]
    k_BHSd, v_BHSd = repeat_kv(k_BKSd, n_rep), repeat_kv(v_BKSd, n_rep)
    return F.scaled_dot_product_attention(
        q_BHTd, k_BHSd, v_BHSd, attn_mask=mask, dropout_p=dropout_p, scale=scale
    )


# -------------------------------------------------------------------- modules
class GQAttention(nn.Module):
    """Grouped-query self-attention with rotary embeddings (Llama layout).

    Split in two so a KV cache can sit between the halves: :meth:`project_qkv` makes the
    rotated q and the new k/v, :meth:`attend` attends over whatever k/v it is given.
    """

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.dense_head_dim
        self.scale = config.softmax_scale()
        self.dropout = config.attention_dropout
        qwen2 = config.model_type == "qwen2"
        qkv_bias = qwen2 or config.attention_bias
        o_bias = config.attention_bias and not qwen2
        d, hd = config.hidden_size, self.num_heads * self.head_dim
        kvd = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(d, hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kvd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kvd, bias=qkv_bias)
        self.o_proj = nn.Linear(hd, d, bias=o_bias)

    def project_qkv(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x [B, T, D]``, ``cos/sin [B, T, d/2]`` → rotated ``q [B, H, T, d]``,
        rotated ``k [B, K, T, d]`` and ``v [B, K, T, d]``."""
        b, t, _ = x_BTD.shape
        q = self.q_proj(x_BTD).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x_BTD).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x_BTD).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope_half(q, cos, sin), apply_rope_half(k, cos, sin), v

    def attend(
        self, q_BHTd: torch.Tensor, k_BKSd: torch.Tensor, v_BKSd: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """Attention of ``q`` over ``k/v`` (boolean ``mask [B or 1, 1, T, S]``), then
        ``o_proj``: returns ``[B, T, D]``."""
        dropout_p = self.dropout if self.training else 0.0
        out_BHTd = sdpa_attention(q_BHTd, k_BKSd, v_BKSd, mask, self.scale, dropout_p)
        b, _, t, _ = out_BHTd.shape
        return self.o_proj(out_BHTd.transpose(1, 2).reshape(b, t, -1))

    def forward(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Self-attention over ``x [B, T, D]`` → ``[B, T, D]``. With a ``cache`` the new k/v
        are stored and the queries attend over what it returns (``mask [B|1, 1, T, S]``)."""
        q, k, v = self.project_qkv(x_BTD, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        return self.attend(q, k, v, mask)


class DenseDecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        mlp_bias = config.mlp_bias and config.model_type == "llama"
        self.self_attn = GQAttention(config, layer_idx)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, bias=mlp_bias)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, x_BTD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        x_BTD = x_BTD + self.self_attn(self.input_layernorm(x_BTD), cos, sin, mask, cache)
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD))


class DenseModel(nn.Module):
    """Embedding → decoder layers → final norm (HF ``LlamaModel`` / ``Qwen2Model``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DenseDecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor, cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``input_ids [B, T]`` → final normed hidden states ``[B, T, D]``.

        ``cache`` / ``attn_mask [B|1, 1, T, S]`` are supplied by the inference engine."""
        x_BTD = self.embed_tokens(input_ids)
        cos, sin = self.rotary_emb(position_ids, x_BTD.dtype)
        t = input_ids.shape[1]
        mask = attn_mask
        if mask is None:
            mask = causal_mask(t, t, attention_mask, input_ids.device)
        for layer in self.layers:
            x_BTD = layer(x_BTD, cos, sin, mask, cache)
        return self.norm(x_BTD)


def default_position_ids(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """``[B, T]`` positions: ``0..T-1``, or with a mask ``cumsum(mask) - 1`` clamped at 0, so
    left-padded rows start their real tokens at position 0 (as HF ``generate`` does)."""
    if attention_mask is None:
        b, t = input_ids.shape
        return torch.arange(t, device=input_ids.device)[None].expand(b, t)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class DenseForCausalLM(PretrainedMixin, nn.Module):
    """A Llama or Qwen2 causal LM (``config.model_type`` in ``llama``, ``qwen2``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.model_type not in ("llama", "qwen2"):
            raise ValueError(f"model_type: DenseForCausalLM builds 'llama' or 'qwen2', got "
                             f"{config.model_type!r}; use build_model(config) instead")
        self.config = config
        self.model = DenseModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.init_weights()

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the same Parameter as the embedding when tied."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """normal(0, std) for Linear/Embedding weights (std defaults to
        ``initializer_range``), zero biases, unit norms; recomputes the RoPE table.

        Safe on the meta device; after ``to_empty(device=...)`` call it again to fill
        real values (it also re-ties the embedding, which ``to_empty`` unties).
        """
        std = self.config.initializer_range if std is None else std
        self.tie_weights()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """``input_ids [B, T]``, ``attention_mask [B, T]`` (1 = token, 0 = pad),
        ``position_ids [B, T]`` (derived from the mask when None) → ``logits [B, T, V]`` and,
        if asked, the final normed hidden states ``[B, T, D]``.

        ``cache`` / ``attn_mask [B|1, 1, T, S]``: supplied by the inference engine."""
        if position_ids is None:
            position_ids = default_position_ids(input_ids, attention_mask)
        h_BTD = self.model(input_ids, attention_mask, position_ids, cache, attn_mask)
        logits = self.lm_head(h_BTD)
        return CausalLMOutput(logits=logits, hidden_states=h_BTD if output_hidden_states else None)

    # ------------------------------------------------------------------ engine entry points
    def forward_hidden(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn_mask: torch.Tensor,
        cache: KVCache | None = None, attn_impl: str = "expanded",
    ) -> torch.Tensor:
        """The decoder stack without the head: final normed hidden states ``[B, T, D]``.

        The inference engine applies :meth:`logits_from_hidden` only to the rows it samples
        from. ``attn_impl`` is accepted for a uniform interface with DeepSeek (GQA has one
        path)."""
        return self.model(input_ids, None, position_ids, cache, attn_mask)

    def logits_from_hidden(self, h_ND: torch.Tensor) -> torch.Tensor:
        """``[..., D]`` hidden states from :meth:`forward_hidden` → logits ``[..., V]``."""
        return self.lm_head(h_ND)
