"""Training losses: MTP target alignment, the sequence-wise balance loss, ``LMLoss``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nanoseek.config import get_preset
from nanoseek.model import build_model
from nanoseek.model.outputs import RouterStats
from nanoseek.train.losses import (
    IGNORE_INDEX,
    LMLoss,
    cross_entropy,
    mtp_loss,
    mtp_targets,
    sequence_balance_loss,
)


def test_mtp_targets_alignment() -> None:
    """Depth k at position i predicts t_{i+k+1} of the [B, T+1] window."""
    batch = torch.arange(100, 111).unsqueeze(0)  # t_0..t_10, T = 10
    targets = batch[:, 1:]
    for k in (1, 2, 3):
        y = mtp_targets(targets, k)
        for i in range(10):
            want = batch[0, i + k + 1].item() if i + k + 1 <= 10 else IGNORE_INDEX
            assert y[0, i].item() == want


def test_mtp_loss_is_zero_for_perfect_predictions() -> None:
    batch = torch.randint(0, 50, (2, 9))
    targets = batch[:, 1:]
    depth_logits = []
    for k in (1, 2):
        logits = torch.full((2, 8, 50), -1e4)
        for i in range(8 - k):
            logits[:, i].scatter_(1, batch[:, i + k + 1 : i + k + 2], 1e4)
        depth_logits.append(logits)
    assert mtp_loss(depth_logits, targets).item() == pytest.approx(0.0, abs=1e-6)
    shifted_wrong = [torch.roll(depth_logits[0], 1, dims=1)]
    assert mtp_loss(shifted_wrong, targets).item() > 1.0


def _hand_balance(scores, idx, n_seq, top_k):
    """Float64 loops straight from the formula."""
    n_tok, n_exp = scores.shape
    t = n_tok // n_seq
    total = 0.0
    for b in range(n_seq):
        seq_loss = 0.0
        for i in range(n_exp):
            hits = sum(1 for tt in range(t) if i in idx[b * t + tt].tolist())
            f = n_exp / (top_k * t) * hits
            p = sum(float(scores[b * t + tt, i]) / float(scores[b * t + tt].sum())
                    for tt in range(t)) / t
            seq_loss += f * p
        total += seq_loss
    return total / n_seq


def test_balance_loss_matches_float64_hand_computation() -> None:
    torch.manual_seed(0)
    n_seq, t, n_exp, top_k = 3, 5, 6, 2
    stats = []
    want = 0.0
    for layer in range(2):
        scores = torch.rand(n_seq * t, n_exp, dtype=torch.float64)
        idx = scores.topk(top_k, dim=-1).indices
        stats.append(RouterStats(layer, torch.bincount(idx.flatten(), minlength=n_exp),
                                 scores.float(), idx))
        want += _hand_balance(scores, idx, n_seq, top_k)
    got = sequence_balance_loss(stats, n_seq, top_k)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_balance_loss_is_one_when_uniform_and_has_router_gradient() -> None:
    n_exp, top_k = 4, 1
    scores = torch.full((8, n_exp), 0.5, requires_grad=True)
    idx = torch.tensor([[0], [1], [2], [3], [0], [1], [2], [3]])
    stats = [RouterStats(0, torch.bincount(idx.flatten()), scores, idx)]
    loss = sequence_balance_loss(stats, batch_size=2, top_k=top_k)
    assert loss.item() == pytest.approx(1.0)
    loss.backward()
    assert scores.grad is not None


def test_balance_loss_mask() -> None:
    torch.manual_seed(1)
    scores = torch.rand(2 * 6, 4)
    idx = scores.topk(2, dim=-1).indices
    stats = [RouterStats(0, torch.bincount(idx.flatten()), scores, idx)]
    mask = torch.ones(2, 6)
    mask[1, 3:] = 0
    got = sequence_balance_loss(stats, 2, 2, mask_BT=mask)
    keep = torch.tensor([True] * 6 + [True] * 3 + [False] * 3)
    short = [RouterStats(0, stats[0].counts, scores[keep][6:], idx[keep][6:])]
    full = [RouterStats(0, stats[0].counts, scores[:6], idx[:6])]
    want = (sequence_balance_loss(full, 1, 2) + sequence_balance_loss(short, 1, 2)) / 2
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_lm_loss_combines_terms() -> None:
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    batch = torch.randint(0, 512, (2, 17))
    loss_fn = LMLoss(mtp_weight=[[0.0, 0.3], [0.5, 0.1]], balance_alpha=1e-2)
    loss, metrics = loss_fn(model, batch, progress=0.0)
    want = metrics["lm_loss"] + 0.3 * metrics["mtp_loss"] + 1e-2 * metrics["balance_loss"]
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    out = model(batch[:, :-1])
    assert metrics["lm_loss"].item() == pytest.approx(
        F.cross_entropy(out.logits.flatten(0, 1), batch[:, 1:].flatten()).item(), rel=1e-6)
    loss_late, m_late = loss_fn(model, batch, progress=0.9)  # λ switched to 0.1
    want = m_late["lm_loss"] + 0.1 * m_late["mtp_loss"] + 1e-2 * m_late["balance_loss"]
    assert loss_late.item() == pytest.approx(want.item(), rel=1e-6)
    n_moe = 3  # two MoE decoder layers + the MTP layer, each contributes ≈ 1 or more
    assert metrics["balance_loss"].item() >= n_moe * 0.99


def test_lm_loss_dense_model_without_mtp() -> None:
    model = build_model(get_preset("tiny-llama"))
    batch = torch.randint(0, 512, (2, 9))
    loss, metrics = LMLoss(mtp=False)(model, batch, 0.0)
    assert set(metrics) == {"lm_loss"} and torch.isfinite(loss)
    assert cross_entropy(model(batch[:, :-1]).logits, batch[:, 1:]).item() == pytest.approx(
        loss.item())
