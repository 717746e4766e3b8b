"""Dense Llama / Qwen2 students: logits parity with transformers, SDPA == reference, meta init."""

from __future__ import annotations

import pytest
import torch

from nanoseek.config import ModelConfig, get_preset
from nanoseek.model import build_model, dense
from nanoseek.model.dense import DenseForCausalLM, reference_attention, sdpa_attention
from nanoseek.model.layers import causal_mask

transformers = pytest.importorskip("transformers")

VOCAB = 97
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
               "rope_theta": 500000.0}
YARN_ROPE = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
             "rope_theta": 10000.0}

CASES = {
    "llama-tied": ("llama", {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE}),
    "llama-untied-bias": ("llama", {"tie_word_embeddings": False, "rope_parameters": LLAMA3_ROPE,
                                    "attention_bias": True, "mlp_bias": True, "head_dim": 24}),
    "qwen2": ("qwen2", {"tie_word_embeddings": False}),
    "qwen2-yarn-tied": ("qwen2", {"tie_word_embeddings": True, "rope_parameters": YARN_ROPE}),
}


def _hf_model(model_type: str, overrides: dict) -> torch.nn.Module:
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM)}[model_type]
    config = cls[0](vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rms_norm_eps=1e-5, **overrides)
    torch.manual_seed(0)
    model = cls[1]._from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # make biases and norm weights non-trivial
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif "norm" in name:
                p.normal_(1.0, 0.1)
    return model


def _ours_from(hf_model: torch.nn.Module) -> DenseForCausalLM:
    config = ModelConfig.from_hf_config(hf_model.config.to_dict())
    model = DenseForCausalLM(config).eval()
    model.load_state_dict(hf_model.state_dict(), strict=True)
    return model


def _padded_batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12))
    mask = torch.ones_like(ids)
    lengths = [12, 7, 3]
    for row, n in enumerate(lengths):
        if side == "right":
            mask[row, n:] = 0
        else:
            mask[row, : 12 - n] = 0
    return ids, mask


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case: str) -> None:
    hf = _hf_model(*CASES[case])
    ours = _ours_from(hf)
    if hf.config.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.randint(0, VOCAB, (2, 32))
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        out = ours(ids, output_hidden_states=True)
    assert out.logits.shape == (2, 32, VOCAB)
    assert out.hidden_states is not None and out.hidden_states.shape == (2, 32, 64)
    torch.testing.assert_close(out.logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("case", ["llama-tied", "qwen2"])
def test_padded_batch_matches_transformers(case: str, side: str) -> None:
    hf = _hf_model(*CASES[case])
    ours = _ours_from(hf)
    ids, mask = _padded_batch(side)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # HF forward does not derive these itself
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask).logits  # positions derived from the mask
    real = mask.bool()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=0)


def test_sdpa_matches_reference_attention() -> None:
    torch.manual_seed(2)
    b, h, k, t, s, d = 2, 6, 2, 5, 9, 8
    q = torch.randn(b, h, t, d)
    keys, values = torch.randn(b, k, s, d), torch.randn(b, k, s, d)
    pad = torch.ones(b, s, dtype=torch.long)
    pad[1, :3] = 0  # left padding in row 1
    for attention_mask in (None, pad):
        mask = causal_mask(t, s, attention_mask, q.device)  # queries are the last t positions
        ref = reference_attention(q, keys, values, mask, d**-0.5)
        fast = sdpa_attention(q, keys, values, mask, d**-0.5)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_model_sdpa_path_matches_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model = DenseForCausalLM(get_preset("tiny-qwen2")).eval()
    ids, mask = _padded_batch("left")
    with torch.no_grad():
        fast = model(ids, attention_mask=mask).logits
        monkeypatch.setattr(dense, "sdpa_attention",
                            lambda q, k, v, m, scale, dropout_p: reference_attention(
                                q, k, v, m, scale))
        ref = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


def test_project_qkv_then_attend_equals_forward() -> None:
    model = DenseForCausalLM(get_preset("tiny-llama")).eval()
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 6, 64)
    cos, sin = model.model.rotary_emb(torch.arange(6)[None], x.dtype)
    mask = causal_mask(6, 6, None, x.device)
    q, k, v = attn.project_qkv(x, cos, sin)
    assert q.shape == (1, 4, 6, 16) and k.shape == v.shape == (1, 2, 6, 16)
    # decoding the last token over cached k/v gives the last row of the full pass
    last = attn.attend(q[:, :, -1:], k, v, causal_mask(1, 6, None, x.device))
    torch.testing.assert_close(last, attn(x, cos, sin, mask)[:, -1:], atol=1e-5, rtol=1e-5)


def test_meta_device_construction_and_init() -> None:
    config = get_preset("tiny-llama")
    with torch.device("meta"):
        model = build_model(config)
    assert isinstance(model, DenseForCausalLM)
    assert all(p.is_meta for p in model.parameters())
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    reference = DenseForCausalLM(config)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, reference.model.rotary_emb.inv_freq)
    norm = model.model.layers[0].input_layernorm.weight
    assert torch.equal(norm, torch.ones_like(norm))
    w = model.model.layers[0].self_attn.q_proj.weight
    assert abs(w.std().item() - config.initializer_range) < 0.005
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long)).logits).all()


def test_init_weights_defaults() -> None:
    model = DenseForCausalLM(get_preset("tiny-qwen2"))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.o_proj.bias is None
    assert torch.equal(attn.q_proj.bias, torch.zeros_like(attn.q_proj.bias))
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    model.init_weights(std=0.5)
    assert abs(model.lm_head.weight.std().item() - 0.5) < 0.05


def test_bad_gqa_config_is_rejected_by_config() -> None:
    with pytest.raises(ValueError, match="num_key_value_heads"):
        get_preset("tiny-llama").replace(num_key_value_heads=3)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-qwen2"])
def test_our_config_and_weights_open_in_transformers(preset: str) -> None:
    config = get_preset(preset)
    ours = DenseForCausalLM(config).eval()
    hf_config = transformers.AutoConfig.for_model(**config.to_hf_config())
    hf = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    hf.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, config.vocab_size, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits, atol=1e-4, rtol=0)
