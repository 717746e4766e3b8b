"""GRPO's algebra against hand computations in float64: advantages, the three loss
aggregations, k3 KL, the clip, completion masks, micro-batch / data-parallel gradient
invariance, and the shared log-prob helper against a float64 reference and the engine."""

from __future__ import annotations

import math

import pytest
import torch

from nanoseek.config import get_preset
from nanoseek.model import build_model
from nanoseek.rl.grpo import (
    aggregation_weights,
    clipped_surrogate,
    group_advantages,
    k3_kl,
    truncated_is_weight,
)
from nanoseek.rl.grpo_trainer import GRPOLoss, micro_batches
from nanoseek.rl.logprobs import sequence_logprobs, token_logprobs
from nanoseek.rl.rollout import Rollout, collate, completion_length

EOS, PAD = 1, 2
D = torch.float64


def tiny_model(seed: int = 0, vocab: int = 48, moe: bool = True) -> torch.nn.Module:
    """A 2-layer DeepSeek-V3-shaped model (MLA; the second layer MoE unless ``moe=False``:
    the router computes in float32, which float64 gradient checks must avoid)."""
    config = get_preset("tiny").replace(vocab_size=vocab, num_hidden_layers=2,
                                        first_k_dense_replace=1 if moe else 2,
                                        num_nextn_predict_layers=0, eos_token_id=EOS,
                                        bos_token_id=0)
    torch.manual_seed(seed)
    return build_model(config)


# -------------------------------------------------------------------- advantages
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 2.0]],
                       dtype=D)


def _by_hand(scale: str, eps: float) -> torch.Tensor:
    out = torch.zeros_like(REWARDS)
    flat = REWARDS.flatten().tolist()
    mean_all = sum(flat) / len(flat)
    std_all = math.sqrt(sum((x - mean_all) ** 2 for x in flat) / (len(flat) - 1))
    for p, row in enumerate(REWARDS.tolist()):
        mean = sum(row) / len(row)
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (len(row) - 1))
        div = {"group": std + eps, "batch": std_all + eps, "none": 1.0}[scale]
        out[p] = torch.tensor([(x - mean) / div for x in row], dtype=D)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_hand_computation(scale: str) -> None:
    got = group_advantages(REWARDS, scale, eps=1e-4)
    torch.testing.assert_close(got, _by_hand(scale, 1e-4), rtol=1e-12, atol=1e-12)
    assert torch.equal(got[1], torch.zeros(4, dtype=D))  # zero-variance group: exactly 0
    # a given (e.g. all-rank) batch std is used as is
    torch.testing.assert_close(group_advantages(REWARDS, "batch", 0.0, batch_std=2.0)[0],
                               (REWARDS[0] - 0.5) / 2.0)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 3, 6, 7, 12])
def test_tied_groups_get_exactly_zero_even_without_eps(scale: str, group_size: int) -> None:
    """0.1 × G has a mean that rounds: unguarded, (r - mean) / std was ±0.8 to ±0.96 for every
    sample of the group (or 0/0 = NaN when the mean came out exact)."""
    rewards = torch.tensor([[0.1] * group_size, [1.1] * group_size], dtype=D)
    if group_size > 1:  # and one untied group, so the batch std is not 0
        rewards = torch.cat([rewards, torch.arange(group_size, dtype=D)[None]])
    got = group_advantages(rewards, scale, eps=0.0)
    assert torch.equal(got[:2], torch.zeros(2, group_size, dtype=D))
    assert torch.isfinite(got).all()


def test_advantages_reject_unknown_scale() -> None:
    with pytest.raises(ValueError, match="scale"):
        group_advantages(REWARDS, "per-token")


# -------------------------------------------------------------------- aggregation
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_aggregations_match_hand_computation(loss_type: str) -> None:
    torch.manual_seed(0)
    loss_BT = torch.randn(4, 6, dtype=D)
    mask_BT = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0],
                            [0, 0, 0, 1, 1, 0]], dtype=D)
    max_len = 7
    rows = [[loss_BT[b, t].item() for t in range(6) if mask_BT[b, t]] for b in range(4)]
    want = {"grpo": sum(sum(r) / len(r) for r in rows) / 4,
            "dapo": sum(sum(r) for r in rows) / sum(len(r) for r in rows),
            "dr_grpo": sum(sum(r) for r in rows) / (4 * max_len)}[loss_type]
    w = aggregation_weights(mask_BT, loss_type, num_seqs=4, num_tokens=float(mask_BT.sum()),
                            max_len=max_len)
    assert (loss_BT * w).sum().item() == pytest.approx(want, rel=1e-12)


# -------------------------------------------------------------------- KL
def test_k3_matches_float64_reference_and_is_an_unbiased_kl() -> None:
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(9, dtype=D), 0)
    q = torch.softmax(torch.randn(9, dtype=D), 0)
    ratio = q / p  # π_ref / π_θ
    want = ratio - torch.log(ratio) - 1
    got = k3_kl(torch.log(p).float(), torch.log(q).float())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (got >= 0).all()
    # E_{x~π_θ}[k3] = KL(π_θ || π_ref)
    kl = (p * (p.log() - q.log())).sum()
    assert (p * want).sum().item() == pytest.approx(kl.item(), rel=1e-12)


# -------------------------------------------------------------------- clip
@pytest.mark.parametrize(("log_ratio", "adv", "grad_zero", "clipped"), [
    (0.0, 1.0, False, "none"),            # ratio 1: gradient -Â
    (math.log(1.5), 1.0, True, "high"),   # above 1 + ε_high with Â > 0: clipped, no gradient
    (math.log(1.5), -1.0, False, "none"),  # above with Â < 0: still pushed down
    (math.log(0.5), -1.0, True, "low"),   # below 1 - ε_low with Â < 0: clipped
    (math.log(0.5), 1.0, False, "none"),  # below with Â > 0: still pushed up
    (math.log(1.25), 1.0, False, "none"),  # inside [0.8, 1.28]
])
def test_clip_zeroes_the_gradient_only_in_the_clipped_direction(log_ratio, adv, grad_zero,
                                                                 clipped) -> None:
    old = torch.zeros(1, 1, dtype=D)
    logp = torch.full((1, 1), log_ratio, dtype=D, requires_grad=True)
    a = torch.tensor([[adv]], dtype=D)
    loss, low, high = clipped_surrogate(logp, old, a, 0.2, 0.28)
    loss.sum().backward()
    grad = logp.grad.item()
    if grad_zero:
        assert grad == 0.0
    else:
        assert grad == pytest.approx(-adv * math.exp(log_ratio), rel=1e-12)
    assert bool(low) == (clipped == "low") and bool(high) == (clipped == "high")


# -------------------------------------------------------------------- masks
def test_mask_covers_completion_through_eos_and_nothing_after() -> None:
    rollouts = [
        Rollout([0, 5, 6], [7, 8, EOS, 9, 9], None, "stop", ""),  # tokens after EOS: dropped
        Rollout([0, 5], [7, 8, 9], [-0.1, -0.2, -0.3], "length", ""),  # truncated, no EOS
        Rollout([0, 5, 6, 7], [EOS], [-0.5], "stop", ""),
    ]
    assert [completion_length(r.token_ids, [EOS]) for r in rollouts] == [3, 3, 1]
    batch = collate(rollouts, PAD, [EOS])
    assert batch.input_ids.tolist() == [[0, 5, 6, 7, 8, EOS], [0, 5, 7, 8, 9, PAD],
                                        [0, 5, 6, 7, EOS, PAD]]
    # mask over next-token positions: position t scores token t + 1
    assert batch.mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 0], [0, 0, 0, 1, 0]]
    targets = batch.input_ids[:, 1:][batch.mask.bool()].tolist()
    assert targets == [7, 8, EOS, 7, 8, 9, EOS]
    assert batch.rollout_logp[1].tolist() == pytest.approx([0, -0.1, -0.2, -0.3, 0])
    assert batch.lengths == [3, 3, 1]
    # DAPO overlong filtering: the truncated row trains on nothing
    filtered = collate(rollouts, PAD, [EOS], mask_truncated=True)
    assert filtered.mask[1].sum() == 0 and filtered.mask[0].sum() == 3


# -------------------------------------------------------------------- gradient invariance
def _batch(model: torch.nn.Module, loss_type: str, seed: int = 0
           ) -> tuple[dict[str, torch.Tensor], list[int]]:
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for _ in range(6):
        prompt = torch.randint(3, 48, (int(torch.randint(2, 6, (1,), generator=g)),),
                               generator=g).tolist()
        size = int(torch.randint(1, 7, (1,), generator=g))
        comp = [*torch.randint(3, 48, (size,), generator=g).tolist(), EOS]
        rollouts.append(Rollout([0, *prompt], comp, None, "stop", ""))
    b = collate(rollouts, PAD, [EOS])
    weight = aggregation_weights(b.mask.double(), loss_type, 6, float(b.mask.sum()), 8)
    with torch.no_grad():
        ref = sequence_logprobs(model, b.input_ids)[0] + 0.1 * torch.randn(
            b.mask.shape, generator=g, dtype=D)
    lens = [len(r.prompt_ids) + n for r, n in zip(rollouts, b.lengths, strict=True)]
    return {"input_ids": b.input_ids, "mask": b.mask.double(), "weight": weight,
            "rollout_logp": b.rollout_logp.double(), "ref_logp": ref,
            "adv": torch.randn(6, generator=g, dtype=D)}, lens


def _grads(model, micros, loss_fn) -> list[torch.Tensor]:
    model.zero_grad()
    for m in micros:
        loss_fn(model, m)[0].backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_gradient_is_invariant_to_micro_batching_and_data_parallel_split(loss_type) -> None:
    model = tiny_model(moe=False).double()
    tensors, lens = _batch(model, loss_type)
    loss_fn = GRPOLoss(temperature=0.7, beta=0.05)
    # old log-probs from a slightly different policy, so the ratio and the clip are live
    with torch.no_grad():
        old = sequence_logprobs(model, tensors["input_ids"], 0.7)[0] + 0.2
    whole = [{**micro_batches(tensors, lens, 6, 1, PAD)[0]}]
    whole[0]["old_logp"] = old
    want = _grads(model, whole, loss_fn)
    for size in (1, 2, 4):
        count = math.ceil(6 / size) + 1  # one extra: a zero-weight dummy
        micros = micro_batches(tensors, lens, size, count, PAD)
        for m, start in zip(micros, range(0, 6 * size, size), strict=False):
            m["old_logp"] = old[start : start + size, : m["mask"].shape[1]]
        micros[-1]["old_logp"] = None  # the dummy fills its own
        got = _grads(model, micros, loss_fn)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # two ranks with 4 and 2 rows: each scales its loss by world size 2, DDP averages
    two = GRPOLoss(temperature=0.7, beta=0.05, world_size=2)
    shards = [micro_batches({k: v[:4] for k, v in tensors.items()}, lens[:4], 4, 1, PAD),
              micro_batches({k: v[4:] for k, v in tensors.items()}, lens[4:], 4, 1, PAD)]
    shards[0][0]["old_logp"] = old[:4, : shards[0][0]["mask"].shape[1]]
    shards[1][0]["old_logp"] = old[4:, : shards[1][0]["mask"].shape[1]]
    per_rank = [_grads(model, s, two) for s in shards]
    for a, b, w in zip(*per_rank, want, strict=True):
        torch.testing.assert_close((a + b) / 2, w, rtol=1e-9, atol=1e-12)


def test_first_pass_has_ratio_one_and_gradient_minus_advantage_times_score() -> None:
    model = tiny_model().double()
    tensors, lens = _batch(model, "dapo", seed=1)
    micro = micro_batches(tensors, lens, 6, 1, PAD)[0]
    loss, sums = GRPOLoss()(model, micro)
    assert micro["old_logp"] is not None  # recorded for later passes
    assert sums["clip_low"] == 0 and sums["clip_high"] == 0
    # with ρ ≡ 1 the loss value is -Σ Â·w
    want = -(micro["adv"][:, None] * micro["weight"]).sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)


def test_truncated_importance_weight_by_hand() -> None:
    old = torch.tensor([-1.0, -2.0, -0.1], dtype=D, requires_grad=True)
    sampler = torch.tensor([-1.5, -0.5, -3.0], dtype=D)
    w = truncated_is_weight(old, sampler, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(0.5), math.exp(-1.5), 2.0], dtype=D))
    assert not w.requires_grad


def test_importance_weights_scale_each_tokens_policy_gradient() -> None:
    """With TIS on, the first pass's loss is -Σ Â·w·min(π_old/π_sampler, C) (ρ ≡ 1) and the
    statistics count the weights; a sampler that agrees with the trainer changes nothing."""
    model = tiny_model().double()
    tensors, lens = _batch(model, "dapo", seed=1)
    plain = GRPOLoss()(model, micro_batches(tensors, lens, 6, 1, PAD)[0])[0]
    micro = micro_batches(tensors, lens, 6, 1, PAD)[0]
    agree = {**micro, "rollout_logp": sequence_logprobs(model, micro["input_ids"])[0].detach()}
    same, _ = GRPOLoss(rollout_is_cap=2.0)(model, agree)
    assert same.item() == pytest.approx(plain.item(), rel=1e-9)
    shifted = {**micro, "rollout_logp": agree["rollout_logp"] - 0.3}  # the sampler was surer
    shifted["rollout_logp"][0, :2] -= 5.0  # two tokens far off: truncated at C
    loss, sums = GRPOLoss(rollout_is_cap=2.0)(model, shifted)
    w = torch.exp(agree["rollout_logp"] - shifted["rollout_logp"]).clamp(max=2.0)
    want = -(micro["adv"][:, None] * micro["weight"] * w).sum()
    assert loss.item() == pytest.approx(want.item(), rel=1e-9)
    mask = micro["mask"]
    assert sums["is_weight"].item() == pytest.approx((w * mask).sum().item())
    assert sums["is_truncated"].item() == (mask[0, :2]).sum().item()


# -------------------------------------------------------------------- log-prob helper
def test_logprob_helper_matches_float64_reference_at_temperature() -> None:
    model = tiny_model()
    ids = torch.randint(3, 48, (3, 9))
    logp, entropy = sequence_logprobs(model, ids, temperature=0.6, with_entropy=True)
    assert logp.dtype == torch.float32 and logp.shape == (3, 8)
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits.double() / 0.6
        ref = torch.log_softmax(logits, -1)
        want = ref.gather(-1, ids[:, 1:, None]).squeeze(-1)
        want_entropy = -(ref.exp() * ref).sum(-1)
    torch.testing.assert_close(logp.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(entropy.double(), want_entropy, rtol=0, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sequence_logprobs(model, ids)[0].dtype == torch.float32
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, ids[:, 1:], temperature=0.0)


def _engine_rows(engine, prompts, temperature, seed):
    from nanoseek.infer import SamplingParams
    from nanoseek.rl.rollout import to_rollouts

    params = [SamplingParams(n=3, temperature=temperature, max_tokens=6, seed=seed + i,
                             logprobs=0) for i in range(len(prompts))]
    rows = [r for g in to_rollouts(prompts, engine.generate(prompts, params)) for r in g]
    return collate(rows, PAD, [EOS])


def test_logprob_helper_equals_engine_processed_logprobs_and_sees_weight_updates() -> None:
    from nanoseek.rl.rollout import LocalRolloutEngine

    model = tiny_model()
    engine = LocalRolloutEngine(model, None, kv_cache_memory=2**22)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 48, (40,), generator=g).tolist() for _ in range(2)]  # > 1 block
    for round_ in range(2):
        engine.load_weights(model)
        b = _engine_rows(engine, prompts, 0.7, seed=round_)
        with torch.no_grad():
            logp = sequence_logprobs(model, b.input_ids, 0.7)[0]
        m = b.mask.bool()
        torch.testing.assert_close(logp[m], b.rollout_logp[m], rtol=0, atol=1e-4)
        with torch.no_grad():  # an "optimizer step"
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    # without load_weights the prefix cache still holds KV of the old weights: stale
    b = _engine_rows(engine, prompts, 0.7, seed=5)
    with torch.no_grad():
        logp = sequence_logprobs(model, b.input_ids, 0.7)[0]
    assert (logp[b.mask.bool()] - b.rollout_logp[b.mask.bool()]).abs().max() > 1e-3
