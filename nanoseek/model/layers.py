"""Building blocks shared by every model: RMSNorm, rotary embeddings (+ YaRN / llama3 /
linear scaling) and the SwiGLU feed-forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.config import ModelConfig


class RMSNorm(nn.Module):
    """y = weight * (x / rms(x)), normalized in float32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLU(nn.Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)): dense FFN and shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# -------------------------------------------------------------------- rotary embeddings
def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies ``[rope_dim // 2]`` (float32) and the cos/sin attention factor.

    Implements plain RoPE and the ``linear``, ``yarn`` (with truncated correction range, as
    DeepSeek's release and transformers do) and ``llama3`` scalings.
    """
    dim, base = config.rope_dim, config.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    rs = config.rope_scaling
    if rs is None:
        return inv_freq, 1.0
    kind = rs["rope_type"]
    if kind == "linear":
        return inv_freq / rs["factor"], 1.0
    if kind == "llama3":
        return _llama3_inv_freq(inv_freq, rs), 1.0
    return _yarn_inv_freq(dim, base, rs)


def _yarn_inv_freq(dim: int, base: float, rs: dict) -> tuple[torch.Tensor, float]:
    factor = rs["factor"]
    original = rs["original_max_position_embeddings"]
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: high-frequency lanes kept as trained; 0: fully interpolated
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    attention_factor = rs.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _mscale(factor, mscale) / _mscale(factor, mscale_all_dim)
        else:
            attention_factor = _mscale(factor, 1.0)
    return inv_freq, float(attention_factor)


def _mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _llama3_inv_freq(inv_freq: torch.Tensor, rs: dict) -> torch.Tensor:
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    original = rs["original_max_position_embeddings"]
    low_wavelen, high_wavelen = original / low, original / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions: ``position_ids [B, T]`` → two ``[B, T, rope_dim // 2]``.

    The inverse frequencies are kept in float32 on the CPU as a plain attribute (not a buffer),
    so ``model.to(bfloat16)`` cannot round them and a model built on the ``meta`` device needs
    no fix-up; they are copied to the positions' device on use. cos/sin are computed in float32
    and cast to the activation dtype, like transformers.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        with torch.device("cpu"):
            self.inv_freq, self.attention_factor = rope_inv_freq(config)
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._on_device:
            self._on_device[device] = self.inv_freq.to(device)
        return self._on_device[device]

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        freqs_BTF = position_ids[..., None].float() * self._inv_freq(position_ids.device)
        cos = (freqs_BTF.cos() * self.attention_factor).to(dtype)
        sin = (freqs_BTF.sin() * self.attention_factor).to(dtype)
        return cos, sin


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by frequency i (DeepSeek's layout).

    ``x [B, H, T, R]``, ``cos/sin [B, T, R/2]``. The output is de-interleaved (all rotated
    evens, then all rotated odds), as transformers returns it; queries and keys share the
    layout, so their dot products equal the official complex rotation.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def apply_rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate lane i with lane i + R/2 (the Llama / Qwen2 layout). Shapes as above."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def causal_mask(
    q_len: int, kv_len: int, attention_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """Boolean mask ``[B or 1, 1, q_len, kv_len]``, True where attention is allowed.

    Queries are the last ``q_len`` of ``kv_len`` positions. ``attention_mask [B, kv_len]``
    (1 = real token, 0 = padding) hides padded keys.
    """
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    allowed = q_pos[:, None] >= torch.arange(kv_len, device=device)[None, :]
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :].bool()
        # a padded query still sees itself, so its (ignored) row stays finite
        allowed = allowed | (q_pos[:, None] == torch.arange(kv_len, device=device)[None, :])
    return allowed
