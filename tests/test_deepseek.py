"""DeepSeek-V2/V3 model: logits parity with transformers, MLA paths, grouped MoE, MTP."""

import math

import pytest
import torch
import transformers

from nanoseek.config import ModelConfig, get_preset
from nanoseek.model import build_model
from nanoseek.model.layers import causal_mask, rope_inv_freq
from nanoseek.model.moe import grouped_mm, moe_reference

YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}


def hf_v3(**overrides):
    kw = dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
              num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
              num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=24, qk_nope_head_dim=16,
              qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8, n_shared_experts=1,
              num_experts_per_tok=3, n_group=4, topk_group=2, routed_scaling_factor=2.5,
              max_position_embeddings=512, rope_scaling=dict(YARN), num_nextn_predict_layers=0)
    kw.update(overrides)
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**kw)).eval()
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if "e_score_correction_bias" in name:
                buf.copy_(torch.randn_like(buf) * 0.05)
    return model


def to_ours(hf_model) -> torch.nn.Module:
    """Build nanoseek's model from a transformers one (in memory, experts unfused)."""
    cfg = ModelConfig.from_hf_config(hf_model.config.to_dict())
    sd = {}
    for key, value in hf_model.state_dict().items():
        if key.endswith("experts.gate_up_proj"):
            gate, up = value.chunk(2, dim=1)
            sd[key.replace("gate_up_proj", "gate_proj")] = gate
            sd[key.replace("gate_up_proj", "up_proj")] = up
        else:
            sd[key] = value
    ours = build_model(cfg).eval()
    ours.load_state_dict(sd, strict=True)
    return ours


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def test_v3_logits_match_transformers():
    hf = hf_v3()
    ours = to_ours(hf)
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        ref = hf(ids).logits
        for impl in ("expanded", "absorbed", "reference"):
            assert max_diff(ours(ids, attn_impl=impl).logits, ref) <= 1e-4, impl
        assert max_diff(ours(ids, moe_reference=True).logits, ref) <= 1e-4


def test_v3_left_padded_batch_matches_transformers():
    hf = hf_v3()
    ours = to_ours(hf)
    ids = torch.randint(0, 128, (2, 16))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    assert max_diff(got[mask.bool()], ref[mask.bool()]) <= 1e-4


@pytest.mark.parametrize("topk_method", ["greedy", "group_limited_greedy"])
def test_v2_lite_shape_matches_transformers(topk_method):
    torch.manual_seed(0)
    cfg = transformers.DeepseekV2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=24, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=2,
        num_experts_per_tok=3, n_group=4, topk_group=2, topk_method=topk_method,
        routed_scaling_factor=1.5, max_position_embeddings=512, rope_scaling=dict(YARN))
    hf = transformers.DeepseekV2ForCausalLM(cfg).eval()
    ours = to_ours(hf)
    assert ours.config.q_lora_rank is None and ours.config.scoring_func == "softmax"
    ids = torch.randint(0, 128, (2, 20))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= 1e-4


class ConcatCache:
    """The simplest LatentCache: per-layer tensors grown by concatenation."""

    def __init__(self):
        self.layers = {}

    def update(self, layer_idx, c_kv, k_pe):
        if layer_idx in self.layers:
            old_c, old_pe = self.layers[layer_idx]
            c_kv, k_pe = torch.cat([old_c, c_kv], 1), torch.cat([old_pe, k_pe], 1)
        self.layers[layer_idx] = (c_kv, k_pe)
        return c_kv, k_pe


@pytest.mark.parametrize("impl", ["absorbed", "expanded"])
def test_cached_decode_equals_full_forward(impl):
    torch.manual_seed(1)
    model = build_model(get_preset("tiny")).eval()
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache, steps = ConcatCache(), []
        prompt = 7
        out = model(ids[:, :prompt], cache=cache, attn_impl=impl)
        steps.append(out.logits)
        for t in range(prompt, 12):
            pos = torch.full((2, 1), t)
            mask = causal_mask(1, t + 1, None, ids.device)
            steps.append(model(ids[:, t : t + 1], position_ids=pos, cache=cache,
                               attn_mask=mask, attn_impl=impl).logits)
    assert max_diff(torch.cat(steps, 1), full) <= 1e-4
    c_kv, k_pe = cache.layers[0]
    cfg = model.config
    assert c_kv.shape[-1] + k_pe.shape[-1] == cfg.kv_lora_rank + cfg.qk_rope_head_dim


@pytest.mark.parametrize(("dtype", "hidden"), [(torch.float32, 64), (torch.float32, 36),
                                               (torch.bfloat16, 64)])
def test_grouped_experts_equal_reference_loop(dtype, hidden):
    torch.manual_seed(2)
    cfg = get_preset("tiny").replace(hidden_size=hidden, moe_intermediate_size=24)
    moe = build_model(cfg).model.layers[1].mlp.to(dtype)
    x = torch.randn(3, 10, hidden, dtype=dtype, requires_grad=True)
    w, idx, _ = moe.gate(x.detach().reshape(-1, hidden))
    fast = moe.experts(x.reshape(-1, hidden), w, idx)
    ref = moe_reference(moe.experts, x.reshape(-1, hidden), w, idx)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert max_diff(fast, ref) <= tol
    g_fast = torch.autograd.grad(fast.sum(), [x, moe.experts.gate_proj])
    g_ref = torch.autograd.grad(ref.sum(), [x, moe.experts.gate_proj])
    for a, b in zip(g_fast, g_ref, strict=True):
        assert max_diff(a, b) <= tol * 10


def test_grouped_mm_handles_empty_experts():
    x = torch.randn(6, 16)
    w = torch.randn(4, 8, 16)
    counts = torch.tensor([0, 4, 0, 2])
    out = grouped_mm(x, w, counts)
    expected = torch.cat([x[:4] @ w[1].T, x[4:] @ w[3].T])
    assert max_diff(out, expected) <= 1e-5


def test_grouped_mm_op_gradients_match_float64_loop():
    """``nanoseek::grouped_mm``'s own backward (two grouped matmuls) against float64 autograd
    through a per-expert loop, with empty experts."""
    torch.manual_seed(4)
    counts = torch.tensor([5, 0, 7, 3, 0, 9])
    x64 = torch.randn(int(counts.sum()), 16, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(6, 8, 16, dtype=torch.float64, requires_grad=True)
    x, w = (t.detach().float().requires_grad_() for t in (x64, w64))
    out = grouped_mm(x, w, counts)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    ref = torch.cat([c @ w64[e].T for e, c in enumerate(x64.split(counts.tolist()))])
    (ref * g.double()).sum().backward()
    assert max_diff(out.double(), ref) <= 1e-5
    assert max_diff(x.grad.double(), x64.grad) <= 1e-5
    assert max_diff(w.grad.double(), w64.grad) <= 1e-5
    assert w.grad[1].abs().max() == 0 and w.grad[4].abs().max() == 0


def test_moe_layer_compiles_as_one_graph():
    """The grouped matmul is a custom operator and expert counts have a static shape, so the
    MoE layer traces without a graph break (``fullgraph=True``) and equals eager."""
    torch.manual_seed(5)
    moe = build_model(get_preset("tiny")).model.layers[1].mlp
    x = torch.randn(2, 12, get_preset("tiny").hidden_size)
    compiled = torch.compile(moe, fullgraph=True, backend="aot_eager")
    (y, _), (ref, _) = compiled(x), moe(x)
    assert max_diff(y, ref) <= 1e-6


def test_router_stats_and_mtp_outputs():
    torch.manual_seed(3)
    cfg = get_preset("tiny")
    model = build_model(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 10))
    out = model(ids, return_mtp=True)
    assert out.logits.shape == (2, 10, cfg.vocab_size)
    assert len(out.mtp_logits) == cfg.num_nextn_predict_layers == 1
    assert out.mtp_logits[0].shape == (2, 10, cfg.vocab_size)
    moe_layers = [i for i in range(cfg.num_hidden_layers + 1) if i >= cfg.first_k_dense_replace]
    assert [s.layer_idx for s in out.router_stats] == moe_layers
    for s in out.router_stats:
        assert int(s.counts.sum()) == 2 * 10 * cfg.num_experts_per_tok


def test_mtp_is_causal_in_its_lookahead():
    """MTP depth 1 at position i may see tokens up to i + 1, never i + 2."""
    torch.manual_seed(4)
    model = build_model(get_preset("tiny")).eval()
    ids = torch.randint(0, 512, (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1) % 512
    with torch.no_grad():
        a = model(ids, return_mtp=True).mtp_logits[0]
        b = model(changed, return_mtp=True).mtp_logits[0]
    assert max_diff(a[:, :5], b[:, :5]) <= 1e-6
    assert max_diff(a[:, 5], b[:, 5]) > 1e-3


def test_builds_on_meta_device_without_memory():
    with torch.device("meta"):
        model = build_model(get_preset("deepseek-v3"))
    n = sum(p.numel() for p in model.parameters())
    assert n > 671e9
    assert model.model.layers[3].mlp.experts.gate_proj.shape == (256, 2048, 7168)


def test_v3_yarn_frequencies_follow_the_reference_recipe():
    """§1.3 of the reference: low=10, high=23 lanes for V3; lanes <=10 kept, >=23 divided by 40."""
    cfg = get_preset("deepseek-v3")
    inv_freq, attn_factor = rope_inv_freq(cfg)
    base = 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    assert attn_factor == 1.0
    assert torch.allclose(inv_freq[:11].double(), base[:11], rtol=1e-6)
    assert torch.allclose(inv_freq[23:].double(), base[23:] / 40, rtol=1e-6)
    ramp = (16 - 10) / (23 - 10)
    mid = base[16] / 40 * ramp + base[16] * (1 - ramp)
    assert math.isclose(float(inv_freq[16]), float(mid), rel_tol=1e-5)
