"""Model configuration: one dataclass that mirrors Hugging Face ``config.json``.

``ModelConfig`` covers the three families nanoseek runs:

* ``deepseek_v3`` (and ``deepseek_v2`` read-compatible): MLA attention + DeepSeekMoE + MTP.
* ``llama`` and ``qwen2``: dense GQA students (DeepSeek-R1-Distill style).

Field names are the HF names, so ``from_hf_config`` / ``to_hf_config`` are (almost) identity
maps. Keys nanoseek does not model are kept in ``extra`` and written back unchanged, so a
round trip loses nothing. RoPE settings are read from both spellings found in the wild: the
release configs' ``rope_theta`` + ``rope_scaling`` and transformers 5's ``rope_parameters``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_TYPES = ("deepseek_v3", "deepseek_v2", "llama", "qwen2")
ARCHITECTURES = {
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
ROPE_TYPES = ("default", "linear", "yarn", "llama3")
TOPK_METHODS = ("noaux_tc", "greedy", "group_limited_greedy")
SCORING_FUNCS = ("sigmoid", "softmax")

# Keys written for every model type, in HF order.
_COMMON_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "initializer_range", "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id",
    "eos_token_id", "tie_word_embeddings", "attention_bias", "attention_dropout",
)
_DEEPSEEK_KEYS = (
    "moe_intermediate_size", "num_nextn_predict_layers", "n_shared_experts", "n_routed_experts",
    "routed_scaling_factor", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim",
    "qk_nope_head_dim", "topk_method", "n_group", "topk_group", "num_experts_per_tok",
    "moe_layer_freq", "first_k_dense_replace", "norm_topk_prob", "scoring_func", "rope_interleave",
)
_DENSE_KEYS = ("head_dim", "mlp_bias")
# transformers' DeepseekV2Config defaults where they differ from V3's.
_V2_DEFAULTS = {"topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": False,
                "routed_scaling_factor": 1.0, "n_group": 1, "topk_group": 1}
# Keys that HF configs carry but that are derived or handled elsewhere.
_DERIVED_KEYS = ("model_type", "architectures", "rope_theta", "rope_scaling", "rope_parameters")


@dataclass
class ModelConfig:
    """Architecture of a causal LM, with HF ``config.json`` field names.

    Dense fields apply to every family; the MLA/MoE/MTP block applies to ``deepseek_*``.
    ``rope_scaling`` is normalized to a dict with a ``rope_type`` key (``default``, ``linear``,
    ``yarn`` or ``llama3``) and that type's parameters, or ``None``.
    """

    model_type: str = "deepseek_v3"
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432  # dense FFN width (first_k_dense_replace layers, students)
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # GQA for dense models; unused by MLA
    hidden_act: str = "silu"
    max_position_embeddings: int = 163840
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # qwen2 has q/k/v biases regardless of this flag
    attention_dropout: float = 0.0
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    # dense-only
    head_dim: int | None = None
    mlp_bias: bool = False
    # MLA
    q_lora_rank: int | None = 1536  # None: plain q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rope_interleave: bool = True
    # DeepSeekMoE
    moe_intermediate_size: int = 2048
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 8
    topk_group: int = 4
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    # MTP
    num_nextn_predict_layers: int = 0
    # anything else found in config.json, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rope_scaling = normalize_rope_scaling(self.rope_scaling)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.validate()

    # ---------------------------------------------------------------- derived properties
    @property
    def is_deepseek(self) -> bool:
        return self.model_type in ("deepseek_v3", "deepseek_v2")

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width in MLA: nope + rope (192 for V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def dense_head_dim(self) -> int:
        """Per-head width of a dense (GQA) model."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_dim(self) -> int:
        """How many lanes of each head RoPE rotates."""
        return self.qk_rope_head_dim if self.is_deepseek else self.dense_head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """True if decoder layer ``layer_idx`` uses DeepSeekMoE instead of a dense FFN."""
        return (
            self.is_deepseek
            and self.n_routed_experts > 0
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    @property
    def eos_token_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        if isinstance(self.eos_token_id, int):
            return [self.eos_token_id]
        return list(self.eos_token_id)

    def softmax_scale(self) -> float:
        """Attention softmax scale, with YaRN's mscale correction for MLA.

        For DeepSeek-V3: 192**-0.5 * (0.1 * ln 40 + 1)**2 = 0.1352338.
        """
        if not self.is_deepseek:
            return self.dense_head_dim**-0.5
        scale = self.qk_head_dim**-0.5
        rs = self.rope_scaling
        if rs is not None and rs["rope_type"] == "yarn":
            m = yarn_get_mscale(rs["factor"], rs.get("mscale_all_dim", 0.0) or 0.0)
            scale = scale * m * m
        return scale

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ``ValueError`` naming the field and the fix for an inconsistent config."""
        _check(self.model_type in MODEL_TYPES, "model_type",
               f"unknown model_type {self.model_type!r}; supported: {', '.join(MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            _check(getattr(self, name) > 0, name, f"{name} must be positive")
        _check(self.hidden_act == "silu", "hidden_act",
               f"hidden_act {self.hidden_act!r} is not supported; use 'silu'")
        if self.is_deepseek:
            self._validate_deepseek()
        else:
            self._validate_dense()

    def _validate_dense(self) -> None:
        h, kv = self.num_attention_heads, self.num_key_value_heads
        _check(kv is not None and kv > 0 and h % kv == 0, "num_key_value_heads",
               f"num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})")
        if self.head_dim is None:
            _check(self.hidden_size % h == 0, "num_attention_heads",
                   f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                   f"({h}), or set head_dim")
        _check(self.dense_head_dim % 2 == 0, "head_dim", "head_dim must be even for RoPE")

    def _validate_deepseek(self) -> None:
        _check(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim", "qk_rope_head_dim must be even")
        _check(self.kv_lora_rank > 0, "kv_lora_rank", "kv_lora_rank must be positive")
        _check(self.q_lora_rank is None or self.q_lora_rank > 0, "q_lora_rank",
               "q_lora_rank must be positive, or null for a plain q_proj")
        _check(self.topk_method in TOPK_METHODS, "topk_method",
               f"unknown topk_method {self.topk_method!r}; supported: {', '.join(TOPK_METHODS)}")
        _check(self.scoring_func in SCORING_FUNCS, "scoring_func",
               f"unknown scoring_func {self.scoring_func!r}; use 'sigmoid' or 'softmax'")
        _check(self.first_k_dense_replace >= 0, "first_k_dense_replace", "must be >= 0")
        _check(self.moe_layer_freq >= 1, "moe_layer_freq", "moe_layer_freq must be >= 1")
        _check(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")
        if self.n_routed_experts == 0:
            return
        e, g, k = self.n_routed_experts, self.n_group, self.topk_group
        _check(g >= 1, "n_group", "n_group must be >= 1")
        _check(e % g == 0, "n_routed_experts",
               f"n_routed_experts ({e}) must be divisible by n_group ({g}); "
               "change one of them")
        _check(1 <= k <= g, "topk_group",
               f"topk_group ({k}) must be between 1 and n_group ({g})")
        _check(1 <= self.num_experts_per_tok <= e, "num_experts_per_tok",
               f"num_experts_per_tok ({self.num_experts_per_tok}) must be between 1 and "
               f"n_routed_experts ({e})")
        _check(self.num_experts_per_tok <= k * (e // g), "num_experts_per_tok",
               f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds the experts in the "
               f"topk_group ({k}) kept groups ({k * (e // g)}); raise topk_group")
        if self.topk_method == "noaux_tc" and g > 1:
            _check(e // g >= 2, "n_group",
                   "noaux_tc scores a group by its top-2 experts: each group needs >= 2 experts")

    # ---------------------------------------------------------------- HF interop
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> ModelConfig:
        """Build from a parsed HF ``config.json`` dict (any supported ``model_type``)."""
        hf = dict(hf)
        model_type = hf.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ValueError(f"config.json: unknown model_type {model_type!r}; "
                             f"nanoseek supports {', '.join(MODEL_TYPES)}")
        theta, scaling = _read_rope(hf)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "rope_theta", "rope_scaling"}
        kwargs: dict[str, Any] = {"rope_theta": theta, "rope_scaling": scaling}
        extra: dict[str, Any] = {}
        for key, value in hf.items():
            if key in names:
                kwargs[key] = value
            elif key not in _DERIVED_KEYS:
                extra[key] = value
        if model_type == "deepseek_v2":
            for key, value in _V2_DEFAULTS.items():
                kwargs.setdefault(key, value)
        for key in ("n_group", "topk_group"):
            if key in kwargs and kwargs[key] is None:
                kwargs[key] = 1
        if not model_type.startswith("deepseek"):
            kwargs.setdefault("bos_token_id", None)
            kwargs.setdefault("eos_token_id", None)
            kwargs["num_nextn_predict_layers"] = 0
            kwargs["n_routed_experts"] = 0
        kwargs["extra"] = extra
        return cls(**kwargs)

    def to_hf_config(self) -> dict[str, Any]:
        """The HF ``config.json`` dict (legacy ``rope_theta`` + ``rope_scaling`` spelling,
        which transformers 4.x and 5.x both read)."""
        out: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
        }
        keys = _COMMON_KEYS + (_DEEPSEEK_KEYS if self.is_deepseek else _DENSE_KEYS)
        for key in keys:
            if key in _DENSE_KEYS and getattr(self, key) is None:
                continue  # transformers derives head_dim; an explicit null breaks Qwen2
            out[key] = getattr(self, key)
        out["rope_theta"] = self.rope_theta
        out["rope_scaling"] = _write_rope_scaling(self.rope_scaling)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_config(hf)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


# -------------------------------------------------------------------- RoPE settings
_ROPE_PARAM_KEYS = {
    "default": (),
    "linear": ("factor",),
    "yarn": ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "attention_factor", "truncate"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings"),
}


def normalize_rope_scaling(rs: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return ``rs`` with a ``rope_type`` key and defaults filled, or None for plain RoPE.

    Accepts both ``type`` (release configs) and ``rope_type`` (newer transformers).
    """
    if rs is None:
        return None
    rs = dict(rs)
    rope_type = rs.pop("rope_type", None) or rs.pop("type", None) or "default"
    rs.pop("type", None)
    rs.pop("rope_theta", None)
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_scaling.type: unknown type {rope_type!r}; "
                         f"supported: {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return None
    if "factor" not in rs:
        raise ValueError(f"rope_scaling.factor: required for rope type {rope_type!r}")
    if rope_type == "yarn" and "original_max_position_embeddings" not in rs:
        raise ValueError("rope_scaling.original_max_position_embeddings: required for 'yarn'")
    if rope_type == "llama3":
        for key in _ROPE_PARAM_KEYS["llama3"]:
            if key not in rs:
                raise ValueError(f"rope_scaling.{key}: required for rope type 'llama3'")
    return {"rope_type": rope_type, **rs}


def _read_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either HF spelling."""
    params = hf.get("rope_parameters")
    if params:
        params = dict(params)
        theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        return theta, params
    return float(hf.get("rope_theta", 10000.0)), hf.get("rope_scaling")


def _write_rope_scaling(rs: dict[str, Any] | None) -> dict[str, Any] | None:
    if rs is None:
        return None
    rs = dict(rs)
    rope_type = rs.pop("rope_type")
    return {"type": rope_type, "rope_type": rope_type, **rs}


def yarn_get_mscale(scale: float = 1.0, mscale: float = 1.0) -> float:
    """YaRN attention-temperature correction 0.1 * mscale * ln(scale) + 1 (1 if scale <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


# -------------------------------------------------------------------- presets
_V3_ROPE = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}


def _deepseek_v3() -> ModelConfig:
    return ModelConfig(rope_scaling=dict(_V3_ROPE), num_nextn_predict_layers=1,
                       num_key_value_heads=128)


def _deepseek_v2_lite() -> ModelConfig:
    return ModelConfig(
        model_type="deepseek_v2", vocab_size=102400, hidden_size=2048, intermediate_size=10944,
        moe_intermediate_size=1408, num_hidden_layers=27, first_k_dense_replace=1,
        num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
        n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6, n_group=1, topk_group=1,
        topk_method="greedy", scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=1.0, bos_token_id=100000, eos_token_id=100001,
        rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707,
                      "mscale_all_dim": 0.707},
    )


def _tiny() -> ModelConfig:
    """CI-sized: every V3 feature (q LoRA, YaRN, groups, shared expert, MTP) in ~0.3M params."""
    return ModelConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
        num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        max_position_embeddings=2048, num_nextn_predict_layers=1, initializer_range=0.02,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
    )


def _small() -> ModelConfig:
    """~105M total parameters (~24M active) in the V3 shape family, for CPU benchmarks."""
    return ModelConfig(
        vocab_size=8192, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
        num_hidden_layers=8, first_k_dense_replace=1, num_attention_heads=8,
        num_key_value_heads=8, q_lora_rank=192, kv_lora_rank=128, qk_nope_head_dim=32,
        qk_rope_head_dim=32, v_head_dim=32, n_routed_experts=32, n_shared_experts=1,
        num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        max_position_embeddings=8192, num_nextn_predict_layers=1, initializer_range=0.02,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
                      "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0},
    )


def _tiny_llama() -> ModelConfig:
    return ModelConfig(
        model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=160,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=500000.0,
        bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
        num_nextn_predict_layers=0, n_routed_experts=0,
    )


def _tiny_qwen2() -> ModelConfig:
    return _tiny_llama().replace(model_type="qwen2", rope_theta=10000.0, rms_norm_eps=1e-6,
                                 tie_word_embeddings=False)


PRESETS = {
    "deepseek-v3": _deepseek_v3,
    "deepseek-v2-lite": _deepseek_v2_lite,
    "tiny": _tiny,
    "small": _small,
    "tiny-llama": _tiny_llama,
    "tiny-qwen2": _tiny_qwen2,
}


def get_preset(name: str) -> ModelConfig:
    """A fresh ``ModelConfig`` for a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
