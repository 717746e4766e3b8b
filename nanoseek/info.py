"""``nanoseek info``: architecture, parameter counts, weight memory, KV cache and FLOPs.

    nanoseek info --preset deepseek-v3          # rich tables (plain text when piped)
    nanoseek info --model out/ckpt --json       # reads out/ckpt/config.json only, never weights

Parameters are counted on the instantiated module tree on the ``meta`` device (no memory) and
cross-checked against the closed form in ``nanoseek.cost``; a mismatch is reported
(``"closed_form_match": false`` and a warning) and the exit code is 1. Bad input (unknown
preset, missing directory or config.json, invalid config) exits with code 2 and a message
naming the problem, as argparse does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from nanoseek import cost
from nanoseek.config import PRESETS, ModelConfig, get_preset

ACTIVE_CONVENTION = ("params_active counts the output head but not the input embedding "
                     "(a lookup does no arithmetic); routed experts count top-k/E per MoE layer")
_ROLES = ("embedding", "head", "attention", "dense_ffn", "routed_experts", "shared_experts",
          "router", "norms", "other", "mtp")
_MEMORY_DTYPES = ("fp32", "bf16", "fp8")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoseek info", description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", metavar="NAME",
                     help=f"a built-in config: {', '.join(PRESETS)}")
    src.add_argument("--model", metavar="DIR", help="a model directory (reads DIR/config.json)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--seq-len", type=int, default=4096,
                   help="sequence length for the training-FLOPs attention term (default 4096)")
    p.add_argument("--kv-dtype", choices=_MEMORY_DTYPES, default="bf16",
                   help="element type of the KV cache (default bf16)")
    return p


def load_config(preset: str | None, model_dir: str | None) -> ModelConfig:
    """The config of a preset or of ``model_dir/config.json`` (ValueError / FileNotFoundError)."""
    if preset is not None:
        return get_preset(preset)
    assert model_dir is not None
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"--model: {path} is not a directory")
    return ModelConfig.from_json_file(path / "config.json")


def meta_param_counts(config: ModelConfig) -> cost.ParamCounts:
    """``count_params`` of the model built on the ``meta`` device (no memory is allocated)."""
    from nanoseek.model import build_model

    with torch.device("meta"):
        model = build_model(config)
    return cost.count_params(model)


def architecture(config: ModelConfig) -> dict[str, Any]:
    """The architecture fields worth a glance, in reading order."""
    c = config
    out: dict[str, Any] = {"model_type": c.model_type, "vocab_size": c.vocab_size,
                           "hidden_size": c.hidden_size, "num_hidden_layers": c.num_hidden_layers,
                           "num_attention_heads": c.num_attention_heads}
    if c.is_deepseek:
        moe_layers = sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))
        out |= {"dense_layers": c.num_hidden_layers - moe_layers, "moe_layers": moe_layers,
                "q_lora_rank": c.q_lora_rank, "kv_lora_rank": c.kv_lora_rank,
                "qk_nope_head_dim": c.qk_nope_head_dim, "qk_rope_head_dim": c.qk_rope_head_dim,
                "v_head_dim": c.v_head_dim, "intermediate_size": c.intermediate_size,
                "moe_intermediate_size": c.moe_intermediate_size,
                "n_routed_experts": c.n_routed_experts, "n_shared_experts": c.n_shared_experts,
                "num_experts_per_tok": c.num_experts_per_tok, "n_group": c.n_group,
                "topk_group": c.topk_group, "scoring_func": c.scoring_func,
                "topk_method": c.topk_method,
                "num_nextn_predict_layers": c.num_nextn_predict_layers}
    else:
        out |= {"num_key_value_heads": c.num_key_value_heads, "head_dim": c.dense_head_dim,
                "intermediate_size": c.intermediate_size}
    rope = c.rope_scaling["rope_type"] if c.rope_scaling else "default"
    out |= {"rope": rope, "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings}
    return out


def report(config: ModelConfig, source: str, seq_len: int = 4096,
           kv_dtype: str = "bf16") -> dict[str, Any]:
    """Everything ``nanoseek info`` prints, as one JSON-ready dict."""
    counts = meta_param_counts(config)
    closed = cost.closed_form_params(config)
    out: dict[str, Any] = {
        "source": source,
        "params_total": counts.total,
        "params_total_with_mtp": counts.total_with_mtp,
        "params_active": counts.active,
        "params_active_with_embedding_and_head": counts.active_with_embedding,
        "params_active_without_embedding_and_head": counts.active_core,
        "params_mtp": counts.mtp,
        "params_mtp_active": counts.mtp_active,
        "params_per_expert": counts.expert_size,
        "params_by_role": {role: getattr(counts, role) for role in _ROLES},
        "active_convention": ACTIVE_CONVENTION,
        "closed_form_match": counts == closed,
    }
    if counts != closed:
        a, b = counts.to_dict(), closed.to_dict()
        out["closed_form_mismatch"] = {k: {"module_tree": a[k], "closed_form": b[k]}
                                       for k in a if a[k] != b[k]}
    out["weight_bytes"] = {d: cost.weight_memory_bytes(counts, d) for d in _MEMORY_DTYPES}
    out["weight_bytes_with_mtp"] = {d: cost.weight_memory_bytes(counts, d, include_mtp=True)
                                    for d in _MEMORY_DTYPES}
    kv = cost.kv_cache_bytes_per_token(config, cost.DTYPE_BYTES[kv_dtype])
    out["kv_cache_bytes_per_token"] = {"dtype": kv_dtype, **kv}
    out["seq_len"] = seq_len
    out["train_flops_per_token"] = cost.train_flops_per_token(config, seq_len)
    out["train_flops_per_token_with_mtp"] = cost.train_flops_per_token(config, seq_len, True)
    out["train_flops_formula"] = cost.TRAIN_FLOPS_FORMULA
    out["architecture"] = architecture(config)
    return out


# -------------------------------------------------------------------- human output
def _si(n: float, billion: str = "B") -> str:
    """``1.23B`` parameters; ``billion="G"`` for bytes (``1.23G`` + ``B``)."""
    for unit, scale in (("T", 1e12), (billion, 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"


def _bytes(n: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g} B"


def _print_tables(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    arch = Table(title=f"nanoseek info: {info['source']}", show_header=False)
    for key, value in info["architecture"].items():
        arch.add_row(key, str(value))
    console.print(arch)

    params = Table("parameters", "count", "", title="parameters (module tree on meta)")
    total = info["params_total"]
    for role, n in info["params_by_role"].items():
        if n or role in ("embedding", "attention"):
            share = f"{100 * n / total:.1f}%" if role != "mtp" else "(not in total)"
            params.add_row(role, f"{n:,}", f"{_si(n)}  {share}")
    rows = (("total (no MTP)", "params_total"), ("total with MTP", "params_total_with_mtp"),
            ("active (head, no embedding)", "params_active"),
            ("active with embedding + head", "params_active_with_embedding_and_head"),
            ("active without either", "params_active_without_embedding_and_head"),
            ("MTP active", "params_mtp_active"), ("one routed expert", "params_per_expert"))
    for label, key in rows:
        if info[key] and (key != "params_total_with_mtp" or info["params_mtp"]):
            params.add_row(label, f"{info[key]:,}", _si(info[key]))
    console.print(params)
    console.print(f"convention: {info['active_convention']}")
    match = info["closed_form_match"]
    console.print("closed form: " + ("matches the module tree" if match
                                     else f"MISMATCH {info['closed_form_mismatch']}"))

    mem = Table("weights", *_MEMORY_DTYPES,
                title="weights (all in dtype; SI units)")
    for label, key in (("no MTP", "weight_bytes"), ("with MTP", "weight_bytes_with_mtp")):
        mem.add_row(label, *(f"{_si(info[key][d], 'G')}B" for d in _MEMORY_DTYPES))
    console.print(mem)

    kv = dict(info["kv_cache_bytes_per_token"])
    dtype, cached = kv.pop("dtype"), kv.pop("cached")
    kvt = Table("layout", "bytes/token", "vs cached", title=f"KV cache per token ({dtype})")
    for layout, n in kv.items():
        kvt.add_row(layout, f"{n:,} ({_bytes(n)})", f"{n / cached:.1f}x")
    console.print(kvt)
    console.print(f"training FLOPs/token at T={info['seq_len']}: "
                  f"{info['train_flops_per_token']:.4g} (with MTP "
                  f"{info['train_flops_per_token_with_mtp']:.4g})")
    console.print(f"formula: {info['train_flops_formula']}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns 0, or 1 if the module tree and the closed form disagree.

    Bad input exits with code 2 (``SystemExit``) and a message on stderr."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.seq_len <= 0:
        parser.error(f"--seq-len must be positive, got {args.seq_len}")
    try:
        config = load_config(args.preset, args.model)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    source = f"preset {args.preset}" if args.preset else str(args.model)
    info = report(config, source, args.seq_len, args.kv_dtype)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_tables(info)
    if not info["closed_form_match"]:
        print(f"nanoseek info: module tree and closed form disagree: "
              f"{info['closed_form_mismatch']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
