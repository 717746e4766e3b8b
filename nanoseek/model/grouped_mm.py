"""``torch._grouped_mm`` as the custom operator ``nanoseek::grouped_mm``, with its backward.

The routed experts' grouped matmul multiplies the token rows of each expert (rows sorted by
expert, ``offs`` the cumulative row counts) by that expert's weight. Called directly,
``torch._grouped_mm`` stops ``torch.compile``: it has no float32 fake-tensor kernel in torch
2.13, so tracing fails. Wrapped as a custom operator with a shape-only fake implementation
(and a backward made of two such operators), the compiler treats it as an opaque call and
compiles the rest of the MoE layer and the model around it in one graph.

Shapes: ``x [N, D]`` (rows sorted by expert), ``w [E, O, D]`` (``nn.Linear`` layout per
expert), ``offs [E]`` int32 cumulative row counts; the product is ``[N, O]`` with rows
``offs[e-1]:offs[e]`` equal to ``x[rows] @ w[e].T``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


@torch.library.custom_op("nanoseek::grouped_mm", mutates_args=())
def grouped_mm_op(x_ND: Tensor, w_EOD: Tensor, offs_E: Tensor) -> Tensor:
    """``[N, O]``: each expert's rows of ``x_ND`` times ``w_EOD[e].T``."""
    return torch._grouped_mm(x_ND, w_EOD.transpose(-2, -1), offs=offs_E)


@grouped_mm_op.register_fake
def _grouped_mm_fake(x_ND: Tensor, w_EOD: Tensor, offs_E: Tensor) -> Tensor:
    return x_ND.new_empty(x_ND.shape[0], w_EOD.shape[1])


@torch.library.custom_op("nanoseek::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(grad_NO: Tensor, x_ND: Tensor, offs_E: Tensor) -> Tensor:
    """``[E, O, D]``: per expert ``grad[rows].T @ x[rows]`` (zeros for an expert with no
    rows), the gradient of ``w_EOD``."""
    return torch._grouped_mm(grad_NO.t(), x_ND, offs=offs_E)


@grouped_mm_weight_grad.register_fake
def _weight_grad_fake(grad_NO: Tensor, x_ND: Tensor, offs_E: Tensor) -> Tensor:
    return grad_NO.new_empty(offs_E.shape[0], grad_NO.shape[1], x_ND.shape[1])


def _setup_context(ctx: Any, inputs: tuple[Tensor, Tensor, Tensor], output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad_NO: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
    x_ND, w_EOD, offs_E = ctx.saved_tensors
    grad_NO = grad_NO.contiguous()  # the CPU kernel rejects expanded gradients (``.sum()``'s)
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:  # rows times w[e] (not its transpose): pass w[e].T
        grad_x = grouped_mm_op(grad_NO, w_EOD.transpose(-2, -1), offs_E)
    if ctx.needs_input_grad[1]:
        grad_w = grouped_mm_weight_grad(grad_NO, x_ND, offs_E)
    return grad_x, grad_w, None


grouped_mm_op.register_autograd(_backward, setup_context=_setup_context)
