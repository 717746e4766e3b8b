"""The DeepSeek-V2/V3 causal LM: embed → decoder layers (first k dense, then MoE) → norm →
head, plus optional multi-token-prediction modules.

Module names follow the HF checkpoints (``model.embed_tokens``, ``model.layers.{i}.…``,
``model.norm``, ``lm_head``; MTP at ``model.layers.{num_hidden_layers + k}``), so loading is an
identity map except for the stacked routed experts (see ``moe.Experts``).
"""

from __future__ import annotations

import torch
from torch import nn

from nanoseek.checkpoint import PretrainedMixin
from nanoseek.config import ModelConfig
from nanoseek.model.block import DeepseekDecoderLayer
from nanoseek.model.layers import RMSNorm, RotaryEmbedding, causal_mask
from nanoseek.model.mla import LatentCache
from nanoseek.model.moe import Experts, Router
from nanoseek.model.mtp import MTPLayer, shift_left
from nanoseek.model.outputs import CausalLMOutput, RouterStats


class DeepseekV3Model(nn.Module):
    """``model``: ``embed_tokens``, ``layers`` (decoder layers, then MTP layers), ``norm``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        n = config.num_hidden_layers
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        layers: list[nn.Module] = [
            DeepseekDecoderLayer(config, i, moe=config.is_moe_layer(i)) for i in range(n)
        ]
        layers += [MTPLayer(config, n + k) for k in range(config.num_nextn_predict_layers)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    @property
    def mtp_layers(self) -> list[MTPLayer]:
        return list(self.layers[self.config.num_hidden_layers :])  # type: ignore[arg-type]


class DeepseekV3ForCausalLM(PretrainedMixin, nn.Module):
    """DeepSeek-V3 (and V2) for causal LM. ``forward(input_ids [B, T]) → CausalLMOutput``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekV3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_weights(self, std: float | None = None) -> None:
        """normal(0, std) for every matrix (default ``initializer_range``; V3 used 0.006),
        zeros for biases and the balance bias, ones for norms."""
        std = self.config.initializer_range if std is None else std
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, Router):
                nn.init.normal_(module.weight, 0.0, std)
                if module.e_score_correction_bias is not None:
                    module.e_score_correction_bias.zero_()
            elif isinstance(module, Experts):
                for p in (module.gate_proj, module.up_proj, module.down_proj):
                    nn.init.normal_(p, 0.0, std)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        return_mtp: bool = False,
        cache: LatentCache | None = None,
        attn_mask: torch.Tensor | None = None,
        attn_impl: str = "expanded",
        moe_reference: bool = False,
    ) -> CausalLMOutput:
        """``input_ids [B, T]`` → logits ``[B, T, V]``.

        ``attention_mask [B, S]``: 1 for tokens, 0 for padding (S = T without a cache).
        ``position_ids [B, T]``: default from the mask (left padding) or 0..T-1.
        ``hidden_states``: the last decoder layer's output before the final norm ``[B, T, D]``.
        ``return_mtp``: also run the MTP modules (``mtp_logits[k]`` predicts token t + 2 + k).
        ``cache`` / ``attn_mask [B|1, 1, T, S]``: supplied by the inference engine.
        ``attn_impl``: ``expanded`` (default), ``absorbed`` or ``reference`` (see ``mla.py``);
        ``moe_reference`` runs the plain expert loop instead of grouped compute.
        """
        cfg = self.config
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = _default_positions(attention_mask, b, t, input_ids.device)
        if attn_mask is None:
            attn_mask = causal_mask(t, t, attention_mask, input_ids.device)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        stats: list[RouterStats] = []
        for layer in self.model.layers[: cfg.num_hidden_layers]:
            x, s = layer(x, cos, sin, attn_mask, cache, attn_impl, moe_reference)
            if s is not None:
                stats.append(s)
        logits = self.lm_head(self.model.norm(x))
        out = CausalLMOutput(logits=logits, router_stats=stats)
        if output_hidden_states or return_mtp:
            out.hidden_states = x
        if return_mtp and cfg.num_nextn_predict_layers:
            out.mtp_logits = self.mtp_forward(x, input_ids, cos, sin, attn_mask, stats,
                                              attn_impl, moe_reference)
        return out

    def mtp_forward(self, h_BTD, input_ids, cos, sin, mask, stats=None,
                    attn_impl: str = "expanded", moe_reference: bool = False):
        """Run every MTP depth over a whole sequence (training / scoring).

        Depth k (1-based) at position i sees ``h^{k-1}_i`` and the embedding of ``t_{i+k}``;
        the last k positions have no such token (their logits are to be ignored).
        Returns one ``[B, T, V]`` logits tensor per depth.
        """
        logits = []
        for k, layer in enumerate(self.model.mtp_layers, start=1):
            emb = self.model.embed_tokens(shift_left(input_ids, k))
            h_BTD, s = layer(layer.combine(h_BTD, emb), cos, sin, mask, None, attn_impl,
                             moe_reference)
            if s is not None and stats is not None:
                stats.append(s)
            logits.append(self.lm_head(layer.shared_head.norm(h_BTD)))
        return logits

    # ------------------------------------------------------------------ engine entry points
    def forward_hidden(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn_mask: torch.Tensor,
        cache: LatentCache | None = None, attn_impl: str = "expanded",
    ) -> torch.Tensor:
        """The decoder layers only (no MTP, no head): ``input_ids [B, T]`` → the last layer's
        output before the final norm ``[B, T, D]``.

        The inference engine calls this, then :meth:`logits_from_hidden` on just the rows it
        samples from (``forward`` would make ``[B, T, V]`` logits for every prompt token)."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        for layer in self.model.layers[: self.config.num_hidden_layers]:
            x, _ = layer(x, cos, sin, attn_mask, cache, attn_impl)
        return x

    def logits_from_hidden(self, h_ND: torch.Tensor) -> torch.Tensor:
        """Pre-norm hidden states ``[..., D]`` → logits ``[..., V]`` (final norm, then head)."""
        return self.lm_head(self.model.norm(h_ND))

    def mtp_step(
        self, h_BTD: torch.Tensor, next_ids: torch.Tensor, position_ids: torch.Tensor,
        attn_mask: torch.Tensor, cache: LatentCache | None = None, attn_impl: str = "absorbed",
        depth: int = 0,
    ) -> torch.Tensor:
        """One MTP module over given positions, for speculative drafting with a cache.

        At position i it combines ``h_BTD[:, i]`` (pre-norm hidden state of the previous
        depth at position i) with the embedding of ``next_ids[:, i]`` (token i + 1 + depth)
        and runs MTP layer ``num_hidden_layers + depth`` (its attention uses that cache
        layer index). Returns the module's output hidden states ``[B, T, D]``; their
        :meth:`mtp_logits` predict token i + 2 + depth.
        """
        layer = self.model.mtp_layers[depth]
        emb = self.model.embed_tokens(next_ids)
        cos, sin = self.model.rotary_emb(position_ids, emb.dtype)
        h, _ = layer(layer.combine(h_BTD, emb), cos, sin, attn_mask, cache, attn_impl)
        return h

    def mtp_logits(self, h_ND: torch.Tensor, depth: int = 0) -> torch.Tensor:
        """MTP depth ``depth`` hidden states ``[..., D]`` → logits ``[..., V]``
        (``shared_head.norm``, then the main ``lm_head``)."""
        return self.lm_head(self.model.mtp_layers[depth].shared_head.norm(h_ND))

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype


def _default_positions(mask: torch.Tensor | None, b: int, t: int, device) -> torch.Tensor:
    """0..T-1, or for a (left-)padded batch the running count of real tokens minus one."""
    if mask is None:
        return torch.arange(t, device=device).unsqueeze(0).expand(b, t)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
