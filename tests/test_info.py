"""Parameter counts, KV cache, FLOPs (nanoseek.cost) and the ``nanoseek info`` stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nanoseek import cost, info
from nanoseek.config import PRESETS, ModelConfig, get_preset
from nanoseek.model import build_model


def _meta_counts(config: ModelConfig) -> cost.ParamCounts:
    with torch.device("meta"):
        return cost.count_params(build_model(config))


# -------------------------------------------------------------------- closed form vs the papers
def test_deepseek_v3_closed_form_matches_reference_numbers() -> None:
    c = cost.closed_form_params(get_preset("deepseek-v3"))
    assert c.total == 671_026_419_200
    assert c.active == 36_625_618_432  # head counted, embedding not: "36.6B"
    assert c.active_with_embedding == 37_552_297_472  # "37.55B"
    assert c.active_core == 35_698_939_392  # "35.70B"
    assert c.mtp == 11_610_068_224  # "11.61B unique"
    assert c.expert_size == 44_040_192
    assert c.routed_experts == 58 * 256 * 44_040_192
    assert c.attention == 61 * 187_107_328
    # the hub's "685B": + MTP + its stored copies of embedding and head
    assert round((c.total_with_mtp + c.embedding + c.head) / 1e9, 2) == 684.49


def test_deepseek_v2_lite_closed_form() -> None:
    c = cost.closed_form_params(get_preset("deepseek-v2-lite"))
    assert round(c.total / 1e9, 2) == 15.71
    assert round(c.active / 1e9, 2) == 2.45  # model card: 2.4B
    assert c.mtp == 0


def test_kv_cache_bytes_per_token() -> None:
    kv = cost.kv_cache_bytes_per_token(get_preset("deepseek-v3"))
    assert kv["cached"] == kv["mla_latent"] == 70_272
    assert kv["per_head_kv"] == 128 * (192 + 128) * 61 * 2
    assert round(kv["per_head_kv"] / kv["mla_latent"], 1) == 71.1
    assert round(kv["mha"] / kv["mla_latent"], 1) == 56.9
    assert cost.kv_cache_bytes_per_token(get_preset("deepseek-v3"), 1)["cached"] == 35_136
    kv = cost.kv_cache_bytes_per_token(get_preset("tiny-llama"), dtype_bytes=4)
    assert kv == {"cached": 2 * 2 * 16 * 2 * 4, "gqa": 2 * 2 * 16 * 2 * 4,
                  "mha": 2 * 4 * 16 * 2 * 4}


def test_train_flops_per_token_formula() -> None:
    config = get_preset("tiny-llama")  # 2 layers, 4 heads of 16, tied
    n_active = cost.closed_form_params(config).active
    assert cost.train_flops_per_token(config, 128) == 6 * n_active + 6 * 2 * 128 * 4 * 32
    v3 = get_preset("deepseek-v3")
    flops = cost.train_flops_per_token(v3, 4096)
    assert flops == 6 * 36_625_618_432 + 6 * 61 * 4096 * 128 * (192 + 128)
    assert cost.train_flops_per_token(v3, 4096, include_mtp=True) > flops
    with pytest.raises(ValueError, match="seq_len"):
        cost.train_flops_per_token(v3, 0)


def test_weight_memory_bytes() -> None:
    c = cost.closed_form_params(get_preset("deepseek-v3"))
    assert cost.weight_memory_bytes(c, "bf16") == 2 * 671_026_419_200
    assert cost.weight_memory_bytes(c, "fp8", include_mtp=True) == c.total_with_mtp
    with pytest.raises(ValueError, match="dtype"):
        cost.weight_memory_bytes(c, "int3")


# -------------------------------------------------------------------- module tree vs closed form
@pytest.mark.parametrize("preset", list(PRESETS))
def test_meta_count_equals_closed_form(preset: str) -> None:
    config = get_preset(preset)
    counts = _meta_counts(config)
    assert counts == cost.closed_form_params(config)
    assert counts.other == 0


VARIANTS = {
    "tied-no-qlora": ("tiny", {"tie_word_embeddings": True, "q_lora_rank": None}),
    "bias-freq2-noshared-mtp2": ("tiny", {"attention_bias": True, "moe_layer_freq": 2,
                                          "n_shared_experts": 0, "num_nextn_predict_layers": 2,
                                          "num_hidden_layers": 4}),
    "llama-biases-untied": ("tiny-llama", {"attention_bias": True, "mlp_bias": True,
                                           "tie_word_embeddings": False, "head_dim": 24}),
    "qwen2-tied": ("tiny-qwen2", {"tie_word_embeddings": True, "mlp_bias": True}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_meta_count_equals_closed_form_variants(name: str) -> None:
    preset, changes = VARIANTS[name]
    config = get_preset(preset).replace(**changes)
    assert _meta_counts(config) == cost.closed_form_params(config)


def test_tied_head_counted_once_but_active() -> None:
    config = get_preset("tiny-llama")  # tie_word_embeddings=True
    counts = _meta_counts(config)
    assert counts.head == 0 and counts.head_matrix == counts.embedding == 512 * 64
    assert counts.active == counts.active_with_embedding == counts.total


def test_count_params_on_a_real_model_matches_parameters() -> None:
    torch.manual_seed(0)
    model = build_model(get_preset("tiny"))
    counts = cost.count_params(model)
    buffers = sum(b.numel() for n, b in model.named_buffers() if "e_score_correction_bias" in n)
    assert counts.total_with_mtp == sum(p.numel() for p in model.parameters()) + buffers


def test_counts_match_transformers() -> None:
    """A third opinion: transformers' own modules (no MTP there) hold the same tensors."""
    transformers = pytest.importorskip("transformers")
    for preset in ("deepseek-v3", "tiny-qwen2"):
        config = get_preset(preset)
        hf_config = transformers.AutoConfig.for_model(**config.to_hf_config())
        with torch.device("meta"):
            hf = transformers.AutoModelForCausalLM.from_config(hf_config)
        unique = {id(t): t.numel() for t in hf.state_dict(keep_vars=True).values()}
        assert sum(unique.values()) == cost.closed_form_params(config).total, preset


# -------------------------------------------------------------------- the CLI stage
def test_main_json_deepseek_v3(capsys: pytest.CaptureFixture[str]) -> None:
    assert info.main(["--preset", "deepseek-v3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_total"] == 671_026_419_200
    assert out["params_active"] == 36_625_618_432
    assert out["params_active_with_embedding_and_head"] == 37_552_297_472
    assert out["params_active_without_embedding_and_head"] == 35_698_939_392
    assert out["params_mtp"] == 11_610_068_224
    assert out["closed_form_match"] is True
    assert out["kv_cache_bytes_per_token"]["cached"] == 70_272
    assert out["weight_bytes"]["fp8"] == 671_026_419_200
    assert out["architecture"]["moe_layers"] == 58
    assert out["train_flops_per_token"] > 6 * out["params_active"]


def test_main_model_dir_reads_config_only(tmp_path, capsys) -> None:
    config = get_preset("tiny")
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_config()))
    (tmp_path / "model.safetensors").write_bytes(b"not read")
    assert info.main(["--model", str(tmp_path), "--json", "--seq-len", "256"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_total"] == cost.closed_form_params(config).total
    assert out["seq_len"] == 256
    assert out["source"] == str(tmp_path)


def test_main_tables_plain_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    assert info.main(["--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # no colour codes into a pipe
    assert f"{cost.closed_form_params(get_preset('tiny')).total:,}" in out
    assert "matches the module tree" in out and "mla_latent" in out


def test_python_dash_m_nanoseek_runs_the_cli() -> None:
    out = subprocess.run([sys.executable, "-m", "nanoseek", "info", "--preset", "tiny",
                          "--json"], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout)["params_total"] == cost.closed_form_params(
        get_preset("tiny")).total


def test_main_weight_table_units(capsys: pytest.CaptureFixture[str]) -> None:
    """Parameters read ``15.71B``, bytes ``31.41GB`` (not ``31.41BB``)."""
    assert info.main(["--preset", "deepseek-v2-lite"]) == 0
    out = capsys.readouterr().out
    assert "31.41GB" in out and "62.83GB" in out and "BB" not in out
    assert "15.71B " in out  # the parameter count keeps B for billion


@pytest.mark.parametrize("argv, message", [
    (["--preset", "deepseek-v9"], "unknown preset 'deepseek-v9'"),
    (["--model", "/nonexistent/dir"], "not a directory"),
    (["--preset", "tiny", "--seq-len", "0"], "--seq-len"),
    ([], "one of the arguments --preset --model is required"),
])
def test_main_bad_input_exits_2(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        info.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_main_dir_without_or_with_bad_config(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        info.main(["--model", str(tmp_path)])
    assert e.value.code == 2 and "no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SystemExit) as e:
        info.main(["--model", str(tmp_path)])
    assert e.value.code == 2 and "unknown model_type 'gpt2'" in capsys.readouterr().err
