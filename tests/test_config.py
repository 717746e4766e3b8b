"""ModelConfig: presets, HF round trips, both RoPE spellings, validation errors."""

import math

import pytest

from nanoseek.config import PRESETS, ModelConfig, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_hf_round_trip_every_preset(name):
    cfg = get_preset(name)
    hf = cfg.to_hf_config()
    back = ModelConfig.from_hf_config(hf)
    assert back == cfg
    assert back.to_hf_config() == hf


def test_v3_softmax_scale_matches_reference():
    assert get_preset("deepseek-v3").softmax_scale() == pytest.approx(0.1352338, abs=1e-7)


def test_unknown_keys_survive_round_trip():
    hf = get_preset("tiny").to_hf_config()
    hf["auto_map"] = {"AutoConfig": "configuration_deepseek.DeepseekV3Config"}
    hf["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    back = ModelConfig.from_hf_config(hf).to_hf_config()
    assert back["auto_map"] == hf["auto_map"]
    assert back["quantization_config"] == hf["quantization_config"]


def test_rope_parameters_spelling_reads_like_rope_scaling():
    legacy = get_preset("tiny").to_hf_config()
    new = dict(legacy)
    rs = dict(new.pop("rope_scaling"))
    rs.pop("type")
    new["rope_parameters"] = {**rs, "rope_theta": new.pop("rope_theta")}
    assert ModelConfig.from_hf_config(new) == ModelConfig.from_hf_config(legacy)


def test_release_style_v3_config_reads():
    hf = {
        "model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
        "num_hidden_layers": 61, "rope_theta": 10000,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "num_nextn_predict_layers": 1, "ep_size": 1, "topk_method": "noaux_tc",
    }
    cfg = ModelConfig.from_hf_config(hf)
    assert cfg.rope_scaling["rope_type"] == "yarn"
    assert cfg.extra == {"ep_size": 1}
    expected = 192**-0.5 * (0.1 * math.log(40) + 1) ** 2
    assert cfg.softmax_scale() == pytest.approx(expected)


def test_v2_config_defaults():
    cfg = ModelConfig.from_hf_config({"model_type": "deepseek_v2", "q_lora_rank": None,
                                      "n_group": None, "topk_group": None})
    assert cfg.scoring_func == "softmax" and cfg.topk_method == "greedy"
    assert cfg.n_group == 1 and cfg.q_lora_rank is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"topk_group": 5, "n_group": 4}, "topk_group"),
        ({"n_routed_experts": 10, "n_group": 4}, "n_routed_experts"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"scoring_func": "relu"}, "scoring_func"),
        ({"topk_method": "sinkhorn"}, "topk_method"),
        ({"rope_scaling": {"type": "ntk-by-parts", "factor": 2.0}}, "rope_scaling.type"),
        ({"model_type": "gpt2"}, "model_type"),
    ],
)
def test_validation_names_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        get_preset("tiny").replace(**changes)


def test_gqa_heads_must_divide():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        get_preset("tiny-llama").replace(num_key_value_heads=3)


def test_unknown_model_type_in_hf_config():
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf_config({"model_type": "mamba"})


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("deepseek-v9")
