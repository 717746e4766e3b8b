"""Model arithmetic: parameter counts (total / activated / MTP), weight memory, KV-cache bytes
per token and training FLOPs per token.

Two independent ways to count parameters, held equal by the tests:

* ``count_params(model)`` walks an instantiated module tree (build it on the ``meta`` device
  to spend no memory) and buckets every tensor of its state dict by its HF name;
* ``closed_form_params(config)`` computes the same buckets from the config alone.

Conventions (the numbers in ``REFERENCE.md`` follow them):

* Counts are of the unique tensors of the state dict: parameters plus persistent buffers (the
  router's ``e_score_correction_bias`` is in the checkpoint, so it counts); a tied head counts
  once, as the embedding.
* ``total`` is the main model without MTP (DeepSeek-V3: 671,026,419,200). ``mtp`` counts the MTP
  modules' own tensors, not the embedding and head they share (V3: 11.61B).
* Activated = every non-routed-expert tensor + ``num_experts_per_tok / n_routed_experts`` of the
  routed ones. ``active`` counts the output head but not the input embedding (a lookup does no
  arithmetic): this reproduces both V3's "37B" (36.63B) and V2-Lite's "2.4B" (2.45B).
  ``active_with_embedding`` (37.55B) and ``active_core`` (neither; 35.70B) are the other two.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from torch import nn

from nanoseek.config import ModelConfig

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
TRAIN_FLOPS_FORMULA = (
    "6 * N_active + 6 * L * T * H * (d_qk + d_v)  "
    "(PaLM/Chinchilla: N_active counts the head, not the embedding; attention over all T keys)"
)
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts by role. ``total`` = the first nine buckets (main model, no MTP).

    ``head`` is 0 when tied to the embedding; ``head_matrix`` is the head's size either way
    (it is multiplied by every token). ``routed_active`` / ``mtp_routed_active`` are the routed
    expert parameters one token uses (``num_experts_per_tok`` experts per MoE layer);
    ``expert_size`` is one routed expert's parameters (0 for dense models).
    """

    embedding: int = 0
    head: int = 0
    attention: int = 0
    dense_ffn: int = 0
    routed_experts: int = 0
    shared_experts: int = 0
    router: int = 0
    norms: int = 0
    other: int = 0
    mtp: int = 0
    mtp_routed_experts: int = 0
    routed_active: int = 0
    mtp_routed_active: int = 0
    head_matrix: int = 0
    expert_size: int = 0

    @property
    def total(self) -> int:
        """Main model, MTP excluded (DeepSeek-V3: 671,026,419,200)."""
        return (self.embedding + self.head + self.attention + self.dense_ffn
                + self.routed_experts + self.shared_experts + self.router + self.norms
                + self.other)

    @property
    def total_with_mtp(self) -> int:
        return self.total + self.mtp

    @property
    def active_core(self) -> int:
        """Activated per token, neither embedding nor head (V3: 35.70B)."""
        return self.total - self.embedding - self.head - self.routed_experts + self.routed_active

    @property
    def active(self) -> int:
        """Activated per token, head counted, input embedding not (V3: 36.63B)."""
        return self.active_core + self.head_matrix

    @property
    def active_with_embedding(self) -> int:
        """Activated per token, embedding and head both counted (V3: 37.55B)."""
        return self.active_core + self.embedding + self.head

    @property
    def mtp_active(self) -> int:
        """MTP parameters one token uses, shared embedding/head excluded."""
        return self.mtp - self.mtp_routed_experts + self.mtp_routed_active

    def to_dict(self) -> dict[str, int]:
        """Every field and every derived count, as plain ints."""
        out = dataclasses.asdict(self)
        for name in ("total", "total_with_mtp", "active", "active_with_embedding",
                     "active_core", "mtp_active"):
            out[name] = getattr(self, name)
        return out


# -------------------------------------------------------------------- module-tree count
def count_params(model: nn.Module) -> ParamCounts:
    """Count the unique state-dict tensors of ``model`` (a ``build_model`` result; the
    ``meta`` device is fine) by role, reading roles from the HF module names.

    Stacked routed experts (``mlp.experts.* [E, ...]``) give the per-expert size and, with
    ``model.config.num_experts_per_tok``, the activated share. Layers at index
    ``>= num_hidden_layers`` are MTP modules.
    """
    config: ModelConfig = model.config
    state = model.state_dict(keep_vars=True)
    names_by_id: dict[int, list[str]] = {}
    for name, tensor in state.items():
        names_by_id.setdefault(id(tensor), []).append(name)
    counts = dict.fromkeys((f.name for f in dataclasses.fields(ParamCounts)), 0)
    per_expert: dict[int, int] = {}
    for names in names_by_id.values():
        name = next((n for n in names if n == "model.embed_tokens.weight"), names[0])
        tensor = state[name]
        for bucket in _buckets(name, config.num_hidden_layers):
            counts[bucket] += tensor.numel()
        layer = _expert_layer(name)
        if layer is not None:
            share = tensor.numel() // tensor.shape[0]
            per_expert[layer] = per_expert.get(layer, 0) + share
            active = "mtp_routed_active" if layer >= config.num_hidden_layers else "routed_active"
            counts[active] += share * config.num_experts_per_tok
    if "lm_head.weight" in state:
        counts["head_matrix"] = state["lm_head.weight"].numel()
    if per_expert:
        assert len(set(per_expert.values())) == 1, f"experts differ in size: {per_expert}"
        counts["expert_size"] = next(iter(per_expert.values()))
    return ParamCounts(**counts)


def _buckets(name: str, n_layers: int) -> tuple[str, ...]:
    """The ``ParamCounts`` fields a state-dict tensor named ``name`` adds to."""
    if name == "model.embed_tokens.weight":
        return ("embedding",)
    if name.startswith("lm_head."):
        return ("head",)
    if name.startswith("model.norm."):
        return ("norms",)
    match = _LAYER_RE.fullmatch(name)
    if match is None:
        return ("other",)
    rest = match[2]
    if int(match[1]) >= n_layers:
        return ("mtp", "mtp_routed_experts") if rest.startswith("mlp.experts.") else ("mtp",)
    for prefix, bucket in (("self_attn.", "attention"), ("mlp.experts.", "routed_experts"),
                           ("mlp.shared_experts.", "shared_experts"), ("mlp.gate.", "router"),
                           ("mlp.", "dense_ffn"), ("input_layernorm.", "norms"),
                           ("post_attention_layernorm.", "norms")):
        if rest.startswith(prefix):
            return (bucket,)
    return ("other",)


def _expert_layer(name: str) -> int | None:
    match = _LAYER_RE.fullmatch(name)
    if match is None or not match[2].startswith("mlp.experts."):
        return None
    return int(match[1])


# -------------------------------------------------------------------- closed form
def closed_form_params(config: ModelConfig) -> ParamCounts:
    """The same counts as ``count_params(build_model(config))``, from the config alone."""
    if config.is_deepseek:
        return _deepseek_params(config)
    return _dense_params(config)


def _swiglu(d: int, inter: int, bias: bool = False) -> int:
    return 3 * d * inter + (2 * inter + d if bias else 0)


def mla_attention_params(config: ModelConfig) -> int:
    """One MLA block: q (LoRA or plain), kv_a (latent + rope key), kv_b, o_proj and the LoRA
    norms. ``attention_bias`` adds biases to q_a_proj, kv_a_proj_with_mqa and o_proj."""
    d, h, b = config.hidden_size, config.num_attention_heads, config.attention_bias
    r_q, r_kv = config.q_lora_rank, config.kv_lora_rank
    q_out = h * config.qk_head_dim
    # plain q_proj, or q_a_proj (+ bias) + q_a_layernorm + q_b_proj
    lora_q = 0 if r_q is None else d * r_q + (r_q if b else 0) + r_q + r_q * q_out
    q = d * q_out if r_q is None else lora_q
    kv_a = d * (r_kv + config.qk_rope_head_dim) + (r_kv + config.qk_rope_head_dim if b else 0)
    kv_b = r_kv * h * (config.qk_nope_head_dim + config.v_head_dim)
    o = h * config.v_head_dim * d + (d if b else 0)
    return q + kv_a + r_kv + kv_b + o


def _deepseek_ffn(config: ModelConfig, moe: bool) -> dict[str, int]:
    """FFN buckets of one decoder layer: dense SwiGLU or DeepSeekMoE.

    The router holds ``weight [E, D]`` and, for ``noaux_tc`` routing only, the persistent
    buffer ``e_score_correction_bias [E]``."""
    d = config.hidden_size
    if not moe:
        return {"dense_ffn": _swiglu(d, config.intermediate_size)}
    e, k = config.n_routed_experts, config.num_experts_per_tok
    expert = _swiglu(d, config.moe_intermediate_size)
    bias = e if config.topk_method == "noaux_tc" else 0
    shared = config.n_shared_experts * config.moe_intermediate_size
    return {"routed_experts": e * expert, "routed_active": k * expert, "expert_size": expert,
            "shared_experts": _swiglu(d, shared) if shared else 0, "router": e * d + bias}


def _deepseek_params(config: ModelConfig) -> ParamCounts:
    d, n = config.hidden_size, config.num_hidden_layers
    attn = mla_attention_params(config)
    vd = config.vocab_size * d
    c: dict[str, int] = {"embedding": vd, "head": 0 if config.tie_word_embeddings else vd,
                         "head_matrix": vd, "attention": n * attn, "norms": n * 2 * d + d}
    for i in range(n):
        for key, value in _deepseek_ffn(config, config.is_moe_layer(i)).items():
            c[key] = value if key == "expert_size" else c.get(key, 0) + value
    depth = config.num_nextn_predict_layers
    if depth:
        ffn = _deepseek_ffn(config, config.n_routed_experts > 0)  # MTP layers are MoE
        ffn_params = sum(v for key, v in ffn.items() if key not in ("routed_active", "expert_size"))
        # decoder layer (attention, 2 norms, FFN) + eh_proj [d, 2d] + enorm, hnorm, shared_head.norm
        c["mtp"] = depth * (attn + 2 * d + ffn_params + 2 * d * d + 3 * d)
        c["mtp_routed_experts"] = depth * ffn.get("routed_experts", 0)
        c["mtp_routed_active"] = depth * ffn.get("routed_active", 0)
    return ParamCounts(**c)


def _dense_params(config: ModelConfig) -> ParamCounts:
    """Llama / Qwen2: GQA attention (Qwen2: q/k/v biases always, o_proj none), SwiGLU."""
    d, h, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    hd, n = config.dense_head_dim, config.num_hidden_layers
    qkv_bias = config.model_type == "qwen2" or config.attention_bias
    o_bias = config.model_type == "llama" and config.attention_bias
    attn = (d * (h + 2 * kv) * hd + ((h + 2 * kv) * hd if qkv_bias else 0)
            + h * hd * d + (d if o_bias else 0))
    mlp_bias = config.model_type == "llama" and config.mlp_bias
    vd = config.vocab_size * d
    return ParamCounts(
        embedding=vd, head=0 if config.tie_word_embeddings else vd, head_matrix=vd,
        attention=n * attn, dense_ffn=n * _swiglu(d, config.intermediate_size, mlp_bias),
        norms=n * 2 * d + d,
    )


# -------------------------------------------------------------------- memory and FLOPs
def weight_memory_bytes(counts: ParamCounts, dtype: str, include_mtp: bool = False) -> int:
    """Bytes to hold the weights with every tensor in ``dtype`` (fp32, bf16, fp16, fp8).

    Nominal: a real FP8 checkpoint keeps norms/embeddings in bf16 and adds fp32 block scales
    (1 per 128x128 block, +0.02%)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype: unknown {dtype!r}; use one of {', '.join(DTYPE_BYTES)}")
    params = counts.total_with_mtp if include_mtp else counts.total
    return params * DTYPE_BYTES[dtype]


def kv_cache_bytes_per_token(config: ModelConfig, dtype_bytes: int = 2) -> dict[str, int]:
    """KV-cache bytes per token over the main decoder layers (MTP layers not included).

    ``cached`` is what nanoseek stores. DeepSeek (MLA): ``mla_latent`` = (kv_lora_rank +
    qk_rope_head_dim) * L * bytes (V3 bf16: 70,272); ``per_head_kv`` = heads * (qk_head_dim +
    v_head_dim) * L * bytes, what caching expanded K/V would take; ``mha`` = 2 * heads *
    qk_nope_head_dim * L * bytes, textbook MHA of the same heads. Dense: ``gqa`` = 2 *
    kv_heads * head_dim * L * bytes and ``mha`` with every head.
    """
    n, h = config.num_hidden_layers, config.num_attention_heads
    if config.is_deepseek:
        latent = (config.kv_lora_rank + config.qk_rope_head_dim) * n * dtype_bytes
        per_head = h * (config.qk_head_dim + config.v_head_dim) * n * dtype_bytes
        mha = 2 * h * config.qk_nope_head_dim * n * dtype_bytes
        return {"cached": latent, "mla_latent": latent, "per_head_kv": per_head, "mha": mha}
    hd = config.dense_head_dim
    gqa = 2 * config.num_key_value_heads * hd * n * dtype_bytes
    return {"cached": gqa, "gqa": gqa, "mha": 2 * h * hd * n * dtype_bytes}


def attention_width(config: ModelConfig) -> int:
    """H * (d_qk + d_v): the per-layer width of the score (QK^T) and value (AV) products."""
    if config.is_deepseek:
        return config.num_attention_heads * (config.qk_head_dim + config.v_head_dim)
    return config.num_attention_heads * 2 * config.dense_head_dim


def train_flops_per_token(config: ModelConfig, seq_len: int, include_mtp: bool = False) -> float:
    """Training FLOPs per token (forward + backward) at sequence length ``seq_len``.

    ``6 * N + 6 * L * T * H * (d_qk + d_v)`` (PaLM appendix B; Chinchilla style): N =
    activated parameters with the head and without the embedding lookup; the attention term
    counts all T keys (no causal halving). ``include_mtp`` adds the MTP modules (their
    activated parameters, the shared head again, one attention term per depth).
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len: must be positive, got {seq_len}")
    counts = closed_form_params(config)
    params, layers = counts.active, config.num_hidden_layers
    if include_mtp and config.num_nextn_predict_layers:
        depth = config.num_nextn_predict_layers
        params += counts.mtp_active + depth * counts.head_matrix
        layers += depth
    return float(6 * params + 6 * layers * seq_len * attention_width(config))
