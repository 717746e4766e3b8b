"""HF checkpoint tensor names <-> nanoseek model tensor names, both ways.

HF names are nanoseek's module names with three exceptions (see ``nanoseek.checkpoint``):
routed experts stored one tensor per expert on disk but stacked ``[E, ...]`` in the model (or
fused ``gate_up_proj`` in transformers 5's layout), the embedding / head copies of DeepSeek MTP
layers, and a tied ``lm_head.weight``. Loading: ``targets_for`` maps an on-disk key to where it
goes, ``skip_on_load`` and ``missing_keys`` say what is deliberately skipped or absent.
Saving: ``hf_state_dict`` gives the model's tensors under their HF names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from nanoseek.config import ModelConfig

# Router weights stay float32 whatever dtype the rest of the model is loaded in.
KEEP_FP32 = re.compile(r"(\.mlp\.gate\.weight|\.e_score_correction_bias)$")
_EXPERT_KEY = re.compile(r"^(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_STACKED_NAME = re.compile(r"^(.+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_FUSED_KEY = re.compile(r"^(.+\.mlp\.experts)\.gate_up_proj$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_MTP_COPIES = ("embed_tokens.weight", "shared_head.head.weight")
_IGNORED = re.compile(r"(\.rotary_emb\.inv_freq|\.weight_scale_inv)$")


# ==================================================================== loading: disk -> model
@dataclass
class Target:
    """Where (part of) an on-disk tensor goes: model tensor ``name``, optionally slice
    ``expert`` of a stacked ``[E, ...]`` tensor, taking ``source[:, rows]`` (fused layout)."""

    name: str
    expert: int | None = None
    rows: slice | None = None


def layer_index(key: str) -> int | None:
    """``i`` of a ``model.layers.{i}.…`` key, else None."""
    m = _LAYER_KEY.match(key)
    return int(m.group(1)) if m else None


def skip_on_load(key: str, config: ModelConfig, names: dict[str, torch.Tensor],
                 mtp_on_disk: set[int]) -> bool:
    """Keys that are on disk but deliberately not loaded."""
    if _IGNORED.search(key) or (key not in names and is_optional(key, config)):
        return True
    if key == "lm_head.weight" and config.tie_word_embeddings and key not in names:
        return True
    layer = layer_index(key)
    if layer is None or not config.is_deepseek or layer < config.num_hidden_layers:
        return False
    rest = _LAYER_KEY.match(key).group(2)
    mtp_end = config.num_hidden_layers + config.num_nextn_predict_layers
    return rest in _MTP_COPIES or (layer >= mtp_end and layer in mtp_on_disk)


def targets_for(key: str, names: dict[str, torch.Tensor]) -> list[Target] | None:
    """Model targets of one on-disk key, or None if the model has no place for it."""
    if key in names:
        return [Target(key)]
    m = _EXPERT_KEY.match(key)
    if m and f"{m.group(1)}.{m.group(3)}" in names:
        stacked = f"{m.group(1)}.{m.group(3)}"
        if int(m.group(2)) < names[stacked].shape[0]:
            return [Target(stacked, expert=int(m.group(2)))]
    m = _FUSED_KEY.match(key)
    if m and f"{m.group(1)}.gate_proj" in names:
        inter = names[f"{m.group(1)}.gate_proj"].shape[1]
        return [Target(f"{m.group(1)}.gate_proj", rows=slice(0, inter)),
                Target(f"{m.group(1)}.up_proj", rows=slice(inter, 2 * inter))]
    return None


def expected_shape(target: Target, names: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The on-disk shape that fills ``target`` (one expert's slice, or the fused tensor)."""
    shape = tuple(names[target.name].shape)
    if target.expert is not None:
        return shape[1:]
    if target.rows is not None:  # the fused [E, 2I, D] tensor both halves come from
        return (shape[0], 2 * shape[1], *shape[2:])
    return shape


Plan = dict[str, list[Target]]  # on-disk key → where it goes


def missing_keys(plan: Plan, names: dict[str, torch.Tensor],
                 aliases: dict[str, str]) -> list[str]:
    """HF names the model needs that the checkpoint does not provide."""
    filled: dict[str, set[int | None]] = {}
    for targets in plan.values():
        for t in targets:
            filled.setdefault(aliases[t.name], set()).add(t.expert)
    missing = []
    for name in dict.fromkeys(aliases.values()):
        got = filled.get(name, set())
        stacked = _STACKED_NAME.match(name)
        if stacked and None not in got:
            prefix, proj = stacked.groups()
            missing += [f"{prefix}.{e}.{proj}.weight" for e in range(names[name].shape[0])
                        if e not in got]
        elif not got:
            missing.append(name)
    return missing


def is_optional(name: str, config: ModelConfig) -> bool:
    """DeepSeek-V2 checkpoints have no correction bias (only ``noaux_tc`` routing uses it)."""
    return name.endswith(".e_score_correction_bias") and config.topk_method != "noaux_tc"


# ==================================================================== saving: model -> disk
def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under their HF checkpoint names (no copies: views and aliases).

    Stacked experts are split per expert, DeepSeek MTP layers get their embedding / head
    copies, a tied ``lm_head.weight`` is left out.
    """
    config: ModelConfig = model.config
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stacked = _STACKED_NAME.match(name)
        if stacked and t.dim() == 3:
            prefix, proj = stacked.groups()
            out.update({f"{prefix}.{e}.{proj}.weight": t[e] for e in range(t.shape[0])})
        else:
            out[name] = t
    if config.is_deepseek:
        embed = model.get_parameter("model.embed_tokens.weight")
        head = embed if config.tie_word_embeddings else model.get_parameter("lm_head.weight")
        for k in range(config.num_nextn_predict_layers):
            layer = f"model.layers.{config.num_hidden_layers + k}"
            out[f"{layer}.embed_tokens.weight"] = embed.detach()
            out[f"{layer}.shared_head.head.weight"] = head.detach()
    return out
