"""Checkpoint I/O: FP8 block format, HF layout in and out, parity with transformers, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nanoseek import checkpoint as ckpt
from nanoseek.checkpoint import (
    CheckpointError,
    PretrainedMixin,
    hf_state_dict,
    load_pretrained,
    parse_size,
    save_pretrained,
)
from nanoseek.config import get_preset
from nanoseek.fp8 import (
    dequantize_fp8_blockwise,
    parse_quantization_config,
    quantize_fp8_blockwise,
)
from nanoseek.model import build_model

transformers = pytest.importorskip("transformers")


# ==================================================================== helpers
def _keys(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor stored in a model directory, by name."""
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                out[key] = f.get_tensor(key)
    return out


def _write(path: Path, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path / "model.safetensors",
              metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    return path


def _nanoseek(preset: str, seed: int = 0, **changes):
    torch.manual_seed(seed)
    model = build_model(get_preset(preset).replace(**changes))
    with torch.no_grad():  # non-trivial norms and correction biases
        for name, t in model.state_dict().items():
            if name.endswith("norm.weight") or name.endswith("e_score_correction_bias"):
                t.uniform_(0.5, 1.5) if name.endswith("weight") else t.normal_(0, 0.1)
    return model.eval()


def _ids(vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 11), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _hf_llama():
    cfg = transformers.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    return transformers.LlamaForCausalLM(cfg)


def _hf_qwen2():
    cfg = transformers.Qwen2Config(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False)
    return transformers.Qwen2ForCausalLM(cfg)


def _hf_deepseek():
    cfg = transformers.DeepseekV3Config(
        vocab_size=101, hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
        qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        num_nextn_predict_layers=0, max_position_embeddings=256,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0,
                      "mscale_all_dim": 1.0})
    model = transformers.DeepseekV3ForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0, 0.1)
    return model


HF_MODELS = {"llama": _hf_llama, "qwen2": _hf_qwen2, "deepseek": _hf_deepseek}


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Each family's random transformers model saved by transformers itself."""
    out = {}
    for name, make in HF_MODELS.items():
        torch.manual_seed(0)
        model = make().eval()
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path)
        out[name] = (model, path)
    return out


# ==================================================================== FP8 block format
@pytest.mark.parametrize("block", [128, (64, 32)])
def test_fp8_round_trip_against_float64_reference(block):
    torch.manual_seed(0)
    w = torch.randn(300, 200) * torch.logspace(-3, 1, 200)  # edge blocks are partial
    w_q, scale = quantize_fp8_blockwise(w, block)
    bo, bi = (block, block) if isinstance(block, int) else block
    assert w_q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
    assert scale.shape == (-(-300 // bo), -(-200 // bi))
    rows, cols = torch.arange(300) // bo, torch.arange(200) // bi
    scale_64 = scale.double()[rows][:, cols]
    amax = torch.zeros_like(scale, dtype=torch.float64)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            amax[i, j] = w[i * bo:(i + 1) * bo, j * bi:(j + 1) * bi].double().abs().max()
    torch.testing.assert_close(scale.double(), amax / 448, rtol=1e-6, atol=0)
    ref = (w_q.double() * scale_64).float()  # exact: 4 + 24 mantissa bits fit a double
    got = dequantize_fp8_blockwise(w_q, scale, block)
    assert torch.equal(got, ref)
    # e4m3 keeps 3 mantissa bits: relative error <= 1/16, subnormal step 2**-9 of the scale
    bound = w.abs() / 16 + scale_64.float() * 2**-10 + 1e-12
    assert ((got - w).abs() <= bound).all()
    assert (w_q.float().abs().amax() == 448).item()


def test_fp8_zero_block_and_dtype():
    w = torch.zeros(130, 5)
    w[0, 0] = 3.0
    w_q, scale = quantize_fp8_blockwise(w)
    assert torch.equal(scale, torch.tensor([[3.0 / 448], [1.0]]))
    torch.testing.assert_close(dequantize_fp8_blockwise(w_q, scale), w, rtol=1e-6, atol=0)
    assert dequantize_fp8_blockwise(w_q, scale, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_fp8_errors():
    w_q, scale = quantize_fp8_blockwise(torch.randn(200, 10))
    with pytest.raises(ValueError, match="weight_scale_inv"):
        dequantize_fp8_blockwise(w_q, scale[:1])
    with pytest.raises(ValueError, match="2-D"):
        quantize_fp8_blockwise(torch.randn(2, 3, 4))
    assert parse_quantization_config(None) is None
    qc = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
          "weight_block_size": [128, 128]}
    assert parse_quantization_config(qc) == (128, 128)
    with pytest.raises(ValueError, match=r"quant_method.*'gptq'"):
        parse_quantization_config({"quant_method": "gptq", "bits": 4})
    with pytest.raises(ValueError, match="weight_block_size"):
        parse_quantization_config({"quant_method": "fp8"})
    with pytest.raises(ValueError, match="fmt"):
        parse_quantization_config({**qc, "fmt": "e5m2"})


# ==================================================================== pure helpers
def test_parse_size():
    assert parse_size(1234) == 1234
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5kb") == 1500
    for bad in ("abc", "5 parsecs", 0, "-3MB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            parse_size(bad)


def test_shard_packing():
    tensors = {"a": torch.zeros(10), "b": torch.zeros(10), "c": torch.zeros(100),
               "d": torch.zeros(1)}
    assert ckpt._shards(tensors, 80) == [["a", "b"], ["c"], ["d"]]
    assert ckpt._shards(tensors, 10**6) == [["a", "b", "c", "d"]]


def test_hf_state_dict_key_map():
    model = _nanoseek("tiny")  # 3 layers, first dense, 8 experts, 1 MTP layer
    cfg = model.config
    sd = hf_state_dict(model)
    e = cfg.n_routed_experts
    assert not any(re.search(r"experts\.(gate|up|down)_proj$", k) for k in sd)
    stacked = model.model.layers[1].mlp.experts
    for i in range(e):
        assert torch.equal(sd[f"model.layers.1.mlp.experts.{i}.gate_proj.weight"],
                           stacked.gate_proj[i])
        assert torch.equal(sd[f"model.layers.1.mlp.experts.{i}.down_proj.weight"],
                           stacked.down_proj[i])
    assert sd["model.layers.3.embed_tokens.weight"] is not None
    assert "model.layers.3.shared_head.head.weight" in sd
    assert "model.layers.1.mlp.gate.e_score_correction_bias" in sd
    assert not any("inv_freq" in k for k in sd)
    tied = _nanoseek("tiny-llama")
    assert "lm_head.weight" not in hf_state_dict(tied)


# ==================================================================== parity with transformers
@pytest.mark.parametrize("family", list(HF_MODELS))
def test_load_transformers_checkpoint(hf_dirs, family):
    hf_model, path = hf_dirs[family]
    model = load_pretrained(path)
    ids = _ids(hf_model.config.vocab_size)
    assert (_logits(model, ids) - _logits(hf_model, ids)).abs().max() <= 1e-4
    if family == "llama":
        assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert not model.training


@pytest.mark.parametrize("family", list(HF_MODELS))
def test_save_opens_in_transformers(hf_dirs, tmp_path, family):
    hf_model, path = hf_dirs[family]
    model = load_pretrained(path)
    save_pretrained(model, tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = _ids(hf_model.config.vocab_size)
    assert (_logits(reloaded, ids) - _logits(hf_model, ids)).abs().max() <= 1e-4
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "float32" and "quantization_config" not in config
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen.get("eos_token_id") == model.config.eos_token_id
    with safe_open(tmp_path / "out" / "model.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_transformers_fused_expert_layout(hf_dirs, tmp_path):
    """transformers 5 keeps experts fused in memory (``gate_up_proj [E, 2I, D]``); 5.24's
    save_pretrained splits them per expert, but a raw dump of its state dict loads too."""
    hf_model, path = hf_dirs["deepseek"]
    tensors = dict(hf_model.state_dict())
    assert "model.layers.1.mlp.experts.gate_up_proj" in tensors
    fused = _write(tmp_path / "fused", tensors, json.loads((path / "config.json").read_text()))
    on_disk = _keys(path)
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in on_disk  # what 5.24 writes
    ids = _ids(hf_model.config.vocab_size)
    assert (_logits(load_pretrained(fused), ids) - _logits(hf_model, ids)).abs().max() <= 1e-4


# ==================================================================== nanoseek round trips
def test_sharded_round_trip(tmp_path):
    model = _nanoseek("tiny", num_nextn_predict_layers=0)
    save_pretrained(model, tmp_path / "m", max_shard_size="20KB")
    index = json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (tmp_path / "m").glob("model-*.safetensors"))
    assert len(shards) > 3 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in _keys(tmp_path / "m").values())
    loaded = load_pretrained(tmp_path / "m", progress=True)
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    ids = _ids(model.config.vocab_size)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_save_into_existing_directory_keeps_other_files(tmp_path):
    path = tmp_path / "m"
    model = _nanoseek("tiny-llama")
    save_pretrained(model, path, max_shard_size=10_000)
    (path / "tokenizer.json").write_text("{}")
    gen = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**gen, "temperature": 0.6}))
    save_pretrained(model, path)  # sharded → single file: old shards and index go
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors",
                     "tokenizer.json"]
    assert json.loads((path / "generation_config.json").read_text())["temperature"] == 0.6
    assert not list(tmp_path.glob(".m.tmp-*"))


def test_save_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(_nanoseek("tiny-llama"), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="safe_serialization"):
        save_pretrained(_nanoseek("tiny-llama"), tmp_path / "m", safe_serialization=False)


def test_bf16_load(tmp_path):
    model = _nanoseek("tiny", num_nextn_predict_layers=0)
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    moe = loaded.model.layers[1].mlp
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert moe.experts.gate_proj.dtype == torch.bfloat16
    assert moe.gate.weight.dtype == torch.float32
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(moe.experts.up_proj, model.model.layers[1].mlp.experts.up_proj.bfloat16())
    # saving a bf16 model records it, and dtype=None then picks it up
    save_pretrained(loaded, tmp_path / "bf16")
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    again = load_pretrained(tmp_path / "bf16")
    assert again.model.embed_tokens.weight.dtype == torch.bfloat16
    assert again.model.layers[1].mlp.gate.weight.dtype == torch.float32
    assert _keys(tmp_path / "bf16")["model.layers.1.mlp.gate.weight"].dtype == torch.float32
    ids = _ids(model.config.vocab_size)
    assert (_logits(again, ids) - _logits(model, ids)).abs().max() < 0.1


def test_mtp_round_trip(tmp_path):
    model = _nanoseek("tiny")
    assert model.config.num_nextn_predict_layers == 1
    save_pretrained(model, tmp_path / "m")
    disk = _keys(tmp_path / "m")
    n = model.config.num_hidden_layers
    assert torch.equal(disk[f"model.layers.{n}.embed_tokens.weight"],
                       model.model.embed_tokens.weight)
    assert torch.equal(disk[f"model.layers.{n}.shared_head.head.weight"], model.lm_head.weight)
    for key in ("enorm.weight", "hnorm.weight", "eh_proj.weight", "shared_head.norm.weight",
                "mlp.experts.7.down_proj.weight", "self_attn.kv_b_proj.weight"):
        assert f"model.layers.{n}.{key}" in disk
    loaded = load_pretrained(tmp_path / "m")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        a, b = model(ids, return_mtp=True), loaded(ids, return_mtp=True)
    assert len(a.mtp_logits) == 1 and torch.equal(a.mtp_logits[0], b.mtp_logits[0])
    # transformers drops the MTP layer (with an "unexpected keys" report) and matches
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert (_logits(hf_model, ids) - _logits(model, ids)).abs().max() <= 1e-4
    # a config without MTP ignores the MTP layer on disk
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    _write(tmp_path / "nomtp", disk, {**config, "num_nextn_predict_layers": 0})
    assert torch.equal(_logits(load_pretrained(tmp_path / "nomtp"), ids), _logits(model, ids))


def test_mtp_weights_absent_suggests_fix(tmp_path):
    model = _nanoseek("tiny", num_nextn_predict_layers=0)
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config,
                                                            "num_nextn_predict_layers": 1}))
    with pytest.raises(CheckpointError, match='"num_nextn_predict_layers": 0'):
        load_pretrained(tmp_path / "m")


def test_fp8_checkpoint_dequantized_on_load(tmp_path):
    model = _nanoseek("tiny")
    block = (16, 16)  # small blocks so the tiny shapes get several, with partial edges
    tensors, reference = {}, {}
    for key, t in hf_state_dict(model).items():
        if t.dim() == 2 and re.search(r"_proj(_with_mqa)?\.weight$", key):
            w_q, scale = quantize_fp8_blockwise(t, block)
            tensors[key], tensors[key + "_scale_inv"] = w_q, scale
            reference[key] = dequantize_fp8_blockwise(w_q, scale, block)
        else:
            tensors[key] = t.clone()
    assert tensors["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (3, 4)
    config = model.config.to_hf_config()
    config.update(torch_dtype="bfloat16", quantization_config={
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": list(block)})
    # release-style shards: here every scale sits in another shard than its weight
    path = tmp_path / "fp8"
    _write(path, {}, config)
    (path / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for key, t in tensors.items():
        shards[sorted(shards)[key.endswith("_scale_inv")]][key] = t.contiguous()
    for file, part in shards.items():
        save_file(part, path / file, metadata={"format": "pt"})
    weight_map = {k: file for file, part in shards.items() for k in part}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_pretrained(path, dtype=torch.float32)
    assert "quantization_config" not in loaded.config.extra
    for key, t in hf_state_dict(loaded).items():
        assert torch.equal(t, reference.get(key, tensors[key])), key
    assert load_pretrained(tmp_path / "fp8").lm_head.weight.dtype == torch.bfloat16
    save_pretrained(loaded, tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain/config.json").read_text())
    # a scale that does not fit the block, and an fp8 weight without its scale
    tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"] = torch.ones(1, 1)
    _write(tmp_path / "bad", tensors, config)
    with pytest.raises(CheckpointError, match=r"o_proj\.weight_scale_inv.*weight_block_size"):
        load_pretrained(tmp_path / "bad")
    del tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    _write(tmp_path / "bad", tensors, config)
    with pytest.raises(CheckpointError, match=r"o_proj\.weight has no"):
        load_pretrained(tmp_path / "bad")
    _write(tmp_path / "gptq", {}, {**config, "quantization_config": {"quant_method": "gptq"}})
    with pytest.raises(ValueError, match="quant_method"):
        load_pretrained(tmp_path / "gptq")


def test_v2_checkpoint_without_correction_bias(tmp_path):
    model = _nanoseek("tiny", num_nextn_predict_layers=0, topk_method="greedy",
                      scoring_func="softmax", n_group=1, topk_group=1, norm_topk_prob=False)
    tensors = {k: v for k, v in hf_state_dict(model).items() if "e_score" not in k}
    _write(tmp_path / "m", tensors, model.config.to_hf_config())
    loaded = load_pretrained(tmp_path / "m")
    bias = loaded.model.layers[1].mlp.gate.e_score_correction_bias  # None, or zeros
    assert bias is None or torch.equal(bias, torch.zeros(8))
    ids = _ids(model.config.vocab_size)
    assert torch.equal(_logits(loaded, ids), _logits(model, ids))


def test_mixin(tmp_path):
    model = _nanoseek("tiny-llama")
    PretrainedMixin.save_pretrained(model, tmp_path / "m", max_shard_size="1MB")

    class Other(PretrainedMixin):
        pass

    with pytest.raises(CheckpointError, match="not a Other"):
        Other.from_pretrained(tmp_path / "m")
    cls = type(model)
    if issubclass(cls, PretrainedMixin):
        assert isinstance(cls.from_pretrained(tmp_path / "m"), cls)


# ==================================================================== bad checkpoints
@pytest.fixture()
def llama_dir(tmp_path):
    model = _nanoseek("tiny-llama")
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    return tmp_path / "m", _keys(tmp_path / "m"), config


def test_errors_name_the_problem(llama_dir, tmp_path):
    _, tensors, config = llama_dir
    cases = [
        ({k: v for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}, config,
         r"1 tensors missing.*model\.layers\.1\.mlp\.up_proj\.weight"),
        ({**tensors, "model.layers.0.mlp.extra.weight": torch.zeros(2)}, config,
         r"no place for.*model\.layers\.0\.mlp\.extra\.weight"),
        ({**tensors, "model.norm.weight": torch.ones(7)}, config,
         r"model\.norm\.weight has shape \[7\].*expects \[64\]"),
        ({**tensors, "model.norm.weight": torch.ones(64, dtype=torch.int32)}, config,
         r"model\.norm\.weight has unsupported dtype I32"),
        (tensors, {**config, "model_type": "gpt2"}, r"model_type 'gpt2'"),
        (tensors, {**config, "architectures": ["LlamaForSequenceClassification"]},
         r"architectures"),
    ]
    for i, (t, c, pattern) in enumerate(cases):
        _write(tmp_path / f"case{i}", t, c)
        with pytest.raises(ValueError, match=pattern):
            load_pretrained(tmp_path / f"case{i}")


def test_tied_checkpoint_with_a_stored_head(llama_dir, tmp_path):
    """Some tied checkpoints store lm_head.weight too; as in transformers, the embedding wins."""
    _, tensors, config = llama_dir
    embed = tensors["model.embed_tokens.weight"]
    _write(tmp_path / "m", {**tensors, "lm_head.weight": embed * 2}, config)
    model = load_pretrained(tmp_path / "m")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.lm_head.weight, embed)


def test_directory_errors(llama_dir, tmp_path):
    path, _, config = llama_dir
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no weights"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_pretrained(tmp_path / "empty")
    save_pretrained(load_pretrained(path), tmp_path / "sharded", max_shard_size="10KB")
    next((tmp_path / "sharded").glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"shard 'model-00002-of-\d+\.safetensors'"):
        load_pretrained(tmp_path / "sharded")
