"""Optimizer pieces: parameter groups, LR schedules, piecewise values, batch ramp, balance bias."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from nanoseek.config import get_preset
from nanoseek.model import build_model
from nanoseek.train import optim as optim_mod
from nanoseek.train.config import OptimConfig
from nanoseek.train.optim import (
    BatchPlan,
    ExpertBalancer,
    build_optimizer,
    lr_at,
    param_groups,
    piecewise,
    validate_optim,
)


# -------------------------------------------------------------------- parameter groups
@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2"])
def test_param_groups_no_decay_on_norms_biases_and_balance_bias(preset: str) -> None:
    model = build_model(get_preset(preset))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names_d, names_n = set(decay["names"]), set(no_decay["names"])
    every = {n for n, p in model.named_parameters()}
    assert names_d | names_n == every and not names_d & names_n
    for name in names_n:
        assert "norm" in name or name.endswith(".bias"), name
    for name in every:
        if "norm" in name or name.endswith(".bias"):
            assert name in names_n
    assert all("e_score_correction_bias" not in n for n in every)  # a buffer, never optimized
    if preset == "tiny":
        assert "model.layers.1.mlp.experts.gate_proj" in names_d  # stacked experts decay
        assert "model.layers.1.mlp.gate.weight" in names_d
        assert "model.embed_tokens.weight" in names_d
    else:
        assert "model.layers.0.self_attn.q_proj.bias" in names_n


def test_build_optimizer_hyperparameters() -> None:
    cfg = OptimConfig(lr=1e-3, beta1=0.8, beta2=0.9, weight_decay=0.05)
    opt = build_optimizer(build_model(get_preset("tiny")), cfg)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


# -------------------------------------------------------------------- schedules
def test_v3_schedule_shape() -> None:
    cfg = OptimConfig(lr=2.2e-4, schedule="v3", warmup_steps=20, min_lr_ratio=0.1)
    total = 1000
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    assert lrs[0] == pytest.approx(2.2e-4 / 20)
    assert all(b > a for a, b in itertools.pairwise(lrs[:20]))  # linear warmup
    assert lrs[19] == pytest.approx(2.2e-4)
    assert all(v == pytest.approx(2.2e-4) for v in lrs[20:676])  # constant
    decay = lrs[676:966]
    assert all(b <= a for a, b in itertools.pairwise(decay))  # cosine down
    assert lrs[821] == pytest.approx(2.2e-4 * (0.1 + 0.9 * 0.5), rel=1e-2)  # cosine midpoint
    assert all(v == pytest.approx(2.2e-5) for v in lrs[966:989])
    assert all(v == pytest.approx(2.2e-4 * 0.0332) for v in lrs[989:])  # 7.3e-6 tail


def test_wsd_cosine_constant_shapes() -> None:
    wsd = OptimConfig(lr=1.0, schedule="wsd", warmup_steps=10, min_lr_ratio=0.0)
    lrs = [lr_at(s, 100, wsd) for s in range(100)]
    assert all(v == 1.0 for v in lrs[9:80])
    assert lrs[90] == pytest.approx(0.5) and lrs[99] == pytest.approx(0.05)
    cos = OptimConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_ratio=0.0)
    lrs = [lr_at(s, 110, cos) for s in range(110)]
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5, abs=0.01)
    assert lrs[109] < 0.01
    const = OptimConfig(lr=1.0, schedule="constant", warmup_steps=0)
    assert {lr_at(s, 50, const) for s in range(50)} == {1.0}


def test_schedule_validation() -> None:
    with pytest.raises(ValueError, match=r"optim.schedule"):
        validate_optim(OptimConfig(schedule="linear"))
    with pytest.raises(ValueError, match="decay_start"):
        validate_optim(OptimConfig(decay_start=0.9, decay_end=0.5))


def test_piecewise() -> None:
    spec = [[0.0, 0.3], [0.676, 0.1]]
    assert piecewise(spec, 0.0) == 0.3 and piecewise(spec, 0.5) == 0.3
    assert piecewise(spec, 0.676) == 0.1 and piecewise(spec, 1.0) == 0.1
    assert piecewise(1e-4, 0.7) == 1e-4
    with pytest.raises(ValueError, match=r"loss.mtp_weight"):
        piecewise([[0.5, 1.0]], 0.1, "loss.mtp_weight")


# -------------------------------------------------------------------- batch plan
def test_batch_plan_accumulation_and_errors() -> None:
    plan = BatchPlan.create(micro_batch=2, seq_len=64, world_size=2, batch_tokens=1024)
    assert plan.unit == 256 and plan.accum_at(0) == 4
    assert plan.total_steps(0, 5000) == (5, 5120)
    with pytest.raises(ValueError, match=r"train.batch_tokens: 1000 .* use 768 or 1024"):
        BatchPlan.create(micro_batch=2, seq_len=64, world_size=2, batch_tokens=1000)
    with pytest.raises(ValueError, match=r"train.steps"):
        plan.total_steps(0, 0)


def test_batch_ramp() -> None:
    plan = BatchPlan.create(micro_batch=1, seq_len=100, world_size=1, batch_tokens=1000,
                            ramp_start=200, ramp_tokens=4000)
    assert plan.tokens_at(0) == 200
    assert plan.tokens_at(2000) == 600  # halfway: 200 + 800 / 2
    assert plan.tokens_at(3999) == 900  # rounded down to whole micro-batches
    assert plan.tokens_at(4000) == 1000
    steps, tokens = plan.total_steps(0, 10_000)
    seen = [0]
    for _ in range(steps):
        seen.append(seen[-1] + plan.tokens_at(seen[-1]))
    assert seen[-1] == tokens >= 10_000 > seen[-2]


# -------------------------------------------------------------------- balance bias
def _moe_model():
    torch.manual_seed(0)
    return build_model(get_preset("tiny"))


def test_balancer_counts_only_while_recording_and_accumulates() -> None:
    model = _moe_model()
    bal = ExpertBalancer(model)
    assert bal.layer_ids == [1, 2, 3]  # two MoE decoder layers + the MTP layer
    x = torch.randint(0, 512, (2, 16))
    model(x)  # not recording: ignored
    with bal.recording():
        out1 = model(x, return_mtp=True)
    with bal.recording():
        out2 = model(x.flip(1), return_mtp=True)
    want = torch.stack([a.counts + b.counts for a, b in
                        zip(out1.router_stats, out2.router_stats, strict=True)]).float()
    biases = [m.gate.e_score_correction_bias.clone() for m in bal.layers]
    loads = bal.step(gamma=0.01)
    assert torch.equal(loads, want)
    assert loads.sum(1).tolist() == [2 * 32 * 2] * 3  # 2 micro-batches × 32 tokens × top-2
    for moe, before, load in zip(bal.layers, biases, want, strict=True):
        expected = before - 0.01 * torch.sign(load - load.mean())
        assert torch.equal(moe.gate.e_score_correction_bias, expected)
    assert bal.step(gamma=0.01).sum() == 0  # counts cleared after a step


def test_balancer_sign_and_gamma_zero() -> None:
    model = _moe_model()
    bal = ExpertBalancer(model)
    load = torch.tensor([10.0, 0, 5, 5, 5, 5, 5, 5])  # mean 5
    bal.add_counts(load.expand(3, 8))
    bal.step(gamma=0.001)
    bias = bal.layers[0].gate.e_score_correction_bias
    assert bias.tolist() == pytest.approx([-0.001, 0.001, 0, 0, 0, 0, 0, 0])
    bal.add_counts(load.expand(3, 8))
    bal.step(gamma=0.0)  # γ = 0 (V3's last 500B tokens): the bias stays
    assert bias.tolist() == pytest.approx([-0.001, 0.001, 0, 0, 0, 0, 0, 0])


def test_balancer_uses_counts_summed_over_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """This rank alone sees expert 0 overloaded; summed with the other rank's counts expert 1
    is: the update must follow the global load."""
    other_rank = torch.tensor([0.0, 30, 5, 5, 5, 5, 5, 5]).expand(3, 8)

    def fake_all_reduce(t: torch.Tensor) -> torch.Tensor:
        return t.add_(other_rank)

    monkeypatch.setattr(optim_mod, "all_reduce_sum_", fake_all_reduce)
    bal = ExpertBalancer(_moe_model())
    bal.add_counts(torch.tensor([20.0, 0, 5, 5, 5, 5, 5, 5]).expand(3, 8))
    loads = bal.step(gamma=1.0)
    assert loads[0].tolist() == [20, 30, 10, 10, 10, 10, 10, 10]
    bias = bal.layers[0].gate.e_score_correction_bias.tolist()
    assert bias == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # mean 13.75


def test_balance_bias_changes_routing() -> None:
    """A raised bias attracts tokens: the bias is used for selection."""
    model = _moe_model()
    x = torch.randint(0, 512, (1, 32))
    before = model(x).router_stats[0].counts
    model.model.layers[1].mlp.gate.e_score_correction_bias[3] = 10.0
    after = model(x).router_stats[0].counts
    assert after[3] == 32 and not math.isclose(float(before[3]), 32)
