"""DeepSeek's FP8 block format: ``float8_e4m3fn`` weights with one fp32 scale per block.

The V3/R1 release stores every projection ``W [out, in]`` as ``W_q`` (e4m3) plus
``weight_scale_inv [ceil(out/128), ceil(in/128)]`` (fp32). Despite its name the scale is a
multiplier: ``W[i, j] = W_q[i, j] * scale_inv[i // 128, j // 128]``. Edge blocks are partial.
``config.json`` announces the format with ``quantization_config = {quant_method: "fp8",
fmt: "e4m3", activation_scheme: "dynamic", weight_block_size: [128, 128]}``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

FP8_E4M3_MAX = 448.0  # largest finite float8_e4m3fn value
DEFAULT_BLOCK = (128, 128)
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

Block = int | tuple[int, int]


def _block_pair(block: Block) -> tuple[int, int]:
    bo, bi = (block, block) if isinstance(block, int) else (int(block[0]), int(block[1]))
    if bo <= 0 or bi <= 0:
        raise ValueError(f"weight_block_size: block sizes must be positive, got {block!r}")
    return bo, bi


def scale_shape(weight_shape: tuple[int, ...] | torch.Size, block: Block = 128) -> tuple[int, int]:
    """Shape of ``weight_scale_inv`` for a 2-D weight: ``(ceil(out/bo), ceil(in/bi))``."""
    bo, bi = _block_pair(block)
    out_dim, in_dim = weight_shape
    return math.ceil(out_dim / bo), math.ceil(in_dim / bi)


def expand_scale(
    scale_inv: torch.Tensor, shape: tuple[int, int], block: Block = 128
) -> torch.Tensor:
    """Blow ``scale_inv [ceil(O/bo), ceil(I/bi)]`` up to one scale per element ``[O, I]``."""
    bo, bi = _block_pair(block)
    out_dim, in_dim = shape
    per_row = scale_inv.repeat_interleave(bo, dim=0)[:out_dim]
    return per_row.repeat_interleave(bi, dim=1)[:, :in_dim]


def quantize_fp8_blockwise(
    w_OI: torch.Tensor, block: Block = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``w [O, I]`` to (``w_q [O, I]`` float8_e4m3fn, ``scale_inv [ceil(O/bo),
    ceil(I/bi)]`` float32) with ``scale_inv = amax(|block|) / 448`` (1.0 for all-zero blocks).

    Edge blocks are zero-padded for the amax, as DeepSeek's release was made.
    """
    if w_OI.dim() != 2:
        raise ValueError(f"quantize_fp8_blockwise: expected a 2-D weight, got {tuple(w_OI.shape)}")
    bo, bi = _block_pair(block)
    out_dim, in_dim = w_OI.shape
    so, si = scale_shape(w_OI.shape, (bo, bi))
    w = w_OI.float()
    padded = F.pad(w, (0, si * bi - in_dim, 0, so * bo - out_dim))
    amax_SoSi = padded.view(so, bo, si, bi).abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax_SoSi > 0, amax_SoSi / FP8_E4M3_MAX, torch.ones_like(amax_SoSi))
    scaled = w / expand_scale(scale_inv, (out_dim, in_dim), (bo, bi))
    w_q = scaled.clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return w_q, scale_inv


def dequantize_fp8_blockwise(
    w_q: torch.Tensor, scale_inv: torch.Tensor, block: Block = 128,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``W = W_q.float() * scale_inv[i // bo, j // bi]`` computed in float32, cast to ``dtype``.

    ``w_q [O, I]`` (an fp8 dtype), ``scale_inv [ceil(O/bo), ceil(I/bi)]`` → ``[O, I]``.
    """
    if w_q.dim() != 2:
        raise ValueError(f"dequantize_fp8_blockwise: expected a 2-D weight, got "
                         f"{tuple(w_q.shape)}")
    expected = scale_shape(w_q.shape, block)
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"weight_scale_inv: expected shape {list(expected)} for a weight of "
                         f"shape {list(w_q.shape)} with block {block}, got "
                         f"{list(scale_inv.shape)}")
    scale = expand_scale(scale_inv.float(), tuple(w_q.shape), block)
    return (w_q.float() * scale).to(dtype)


def parse_quantization_config(qc: dict[str, Any] | None) -> tuple[int, int] | None:
    """The ``(bo, bi)`` block of an ``fp8`` ``quantization_config``, or None when absent.

    Raises ``ValueError`` for quantization methods nanoseek cannot read.
    """
    if qc is None:
        return None
    if not isinstance(qc, dict):
        raise ValueError(f"quantization_config: expected an object, got {qc!r}")
    method = qc.get("quant_method")
    if method != "fp8":
        raise ValueError(f"quantization_config.quant_method: {method!r} is not supported; "
                         "nanoseek reads unquantized weights or DeepSeek's block-wise "
                         "'fp8' format (dequantize the checkpoint first)")
    fmt = qc.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise ValueError(f"quantization_config.fmt: {fmt!r} is not supported; expected 'e4m3'")
    block = qc.get("weight_block_size")
    if block is None:
        raise ValueError("quantization_config.weight_block_size: missing; nanoseek reads only "
                         "block-wise fp8 (e.g. [128, 128])")
    if not isinstance(block, (list, tuple)) or len(block) != 2:
        raise ValueError(f"quantization_config.weight_block_size: expected [rows, cols], "
                         f"got {block!r}")
    return _block_pair(tuple(block))
