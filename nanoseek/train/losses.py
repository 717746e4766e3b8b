"""Training losses of DeepSeek-V3 pretraining: next-token cross-entropy, multi-token prediction
and the sequence-wise balance loss, plus ``LMLoss``, the pretraining ``loss_fn``.

Batches are token windows ``[B, T + 1]``: inputs ``x = batch[:, :T]``, targets
``y = batch[:, 1:]`` (``y_i = t_{i+1}``). MTP depth k (1-based) at position i predicts
``t_{i+k+1} = y_{i+k}``, so its targets are ``y`` shifted left by k, the last k positions
ignored (``IGNORE_INDEX``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.model.mtp import shift_left
from nanoseek.model.outputs import RouterStats
from nanoseek.train.config import Piecewise
from nanoseek.train.optim import piecewise

IGNORE_INDEX = -100


def cross_entropy(logits_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over targets != ``IGNORE_INDEX``, in float32."""
    v = logits_BTV.shape[-1]
    return F.cross_entropy(logits_BTV.reshape(-1, v).float(), targets_BT.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def mtp_targets(targets_BT: torch.Tensor, depth: int) -> torch.Tensor:
    """Targets of MTP depth ``depth`` (1-based): ``targets`` shifted left by ``depth``,
    the last ``depth`` positions ``IGNORE_INDEX``. ``[B, T]``."""
    return shift_left(targets_BT, depth, fill=IGNORE_INDEX)


def mtp_loss(mtp_logits: Sequence[torch.Tensor], targets_BT: torch.Tensor) -> torch.Tensor:
    """``1/D Σ_k CE_k`` over the D MTP depths (multiply by λ for L_MTP)."""
    losses = [cross_entropy(logits, mtp_targets(targets_BT, k))
              for k, logits in enumerate(mtp_logits, start=1)]
    return torch.stack(losses).mean()


def sequence_balance_loss(stats: Sequence[RouterStats], batch_size: int, top_k: int,
                          mask_BT: torch.Tensor | None = None) -> torch.Tensor:
    """DeepSeek-V3's complementary sequence-wise balance loss, summed over MoE layers
    (multiply by α).

    Per layer and sequence: ``Σ_i f_i P_i`` with ``f_i = N_r/(K_r T) Σ_t 1(i ∈ topK_t)`` and
    ``P_i = 1/T Σ_t s'_{i,t}``, ``s'_{i,t} = s_{i,t} / Σ_j s_{j,t}`` (raw router scores
    normalized per token); averaged over the sequences. ``mask_BT`` (1 = real token) limits T
    to the real tokens of each sequence. Gradients reach the router through ``P``.
    """
    total = torch.zeros((), device=stats[0].scores_TE.device if stats else None)
    for s in stats:
        n_tok, n_exp = s.scores_TE.shape
        scores_BTE = s.scores_TE.float().view(batch_size, n_tok // batch_size, n_exp)
        probs_BTE = scores_BTE / scores_BTE.sum(-1, keepdim=True)
        idx_BTK = s.topk_idx_TK.view(batch_size, n_tok // batch_size, -1)
        chosen_BTE = torch.zeros_like(probs_BTE).scatter_(2, idx_BTK, 1.0)
        if mask_BT is None:
            t_B = torch.full((batch_size, 1), float(n_tok // batch_size), device=probs_BTE.device)
        else:
            m = mask_BT.to(probs_BTE.dtype).unsqueeze(-1)
            probs_BTE, chosen_BTE = probs_BTE * m, chosen_BTE * m
            t_B = m.sum(1).clamp(min=1.0)
        f_BE = chosen_BTE.sum(1) * n_exp / (top_k * t_B)
        p_BE = probs_BTE.sum(1) / t_B
        total = total + (f_BE * p_BE).sum(-1).mean()
    return total


@dataclass
class LMLoss:
    """The pretraining ``loss_fn``: ``CE + λ·L_MTP + α·L_Bal``.

    ``mtp_weight`` λ and ``balance_alpha`` α may be piecewise over the run (see
    ``optim.piecewise``); V3 used λ = 0.3 for the first 10T tokens, then 0.1, and α = 1e-4.
    Call as ``loss_fn(model, batch [B, T+1], progress)`` → ``(loss, metrics)``.
    """

    mtp_weight: Piecewise = field(default_factory=lambda: [[0.0, 0.3], [0.676, 0.1]])
    balance_alpha: Piecewise = 1e-4
    mtp: bool = True

    def __call__(self, model: nn.Module, batch: torch.Tensor, progress: float):
        inputs_BT, targets_BT = batch[:, :-1], batch[:, 1:]
        out = model(inputs_BT, return_mtp=True) if self.mtp else model(inputs_BT)
        lm = cross_entropy(out.logits, targets_BT)
        loss, metrics = lm, {"lm_loss": lm.detach()}
        if out.mtp_logits:
            lam = piecewise(self.mtp_weight, progress, "loss.mtp_weight")
            mtp = mtp_loss(out.mtp_logits, targets_BT)
            loss = loss + lam * mtp
            metrics["mtp_loss"] = mtp.detach()
        alpha = piecewise(self.balance_alpha, progress, "loss.balance_alpha")
        if out.router_stats and alpha > 0:
            top_k = out.router_stats[0].topk_idx_TK.shape[-1]
            bal = sequence_balance_loss(out.router_stats, inputs_BT.shape[0], top_k)
            loss = loss + alpha * bal
            metrics["balance_loss"] = bal.detach()
        return loss, metrics
