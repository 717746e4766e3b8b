"""Loading a Hugging Face model directory into a nanoseek model (``load_pretrained``).

Finds the weight files (one ``model.safetensors`` or the shards of the index), reads the
safetensors headers, plans where every on-disk tensor goes (names: ``nanoseek.checkpoint_keys``)
checking shapes and dtypes before any weight is read, then streams one tensor at a time out of
the memory-mapped files into a model built on the ``meta`` device, dequantizing FP8 blocks on
the way in. Overview of the format: ``nanoseek.checkpoint``.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from safetensors import safe_open
from torch import nn

from nanoseek.checkpoint_keys import (
    KEEP_FP32,
    Plan,
    expected_shape,
    is_optional,
    layer_index,
    missing_keys,
    skip_on_load,
    targets_for,
)
from nanoseek.config import ARCHITECTURES, ModelConfig
from nanoseek.fp8 import DEFAULT_BLOCK, dequantize_fp8_blockwise, parse_quantization_config
from nanoseek.fp8 import scale_shape as fp8_scale_shape

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}
_LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is (names the file or tensor)."""


# ==================================================================== finding the files
def read_config(path: str | Path) -> tuple[ModelConfig, tuple[int, int] | None, dict[str, Any]]:
    """``(config, fp8 block or None, raw config.json dict)`` of a model directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_NAME}; is this a Hugging Face model directory?")
    hf = json.loads(file.read_text())
    archs = hf.get("architectures") or []
    if archs and not set(archs) & set(ARCHITECTURES.values()):
        raise CheckpointError(f"{file}: architectures {archs} is not supported; nanoseek loads "
                              f"{', '.join(ARCHITECTURES.values())}")
    block = parse_quantization_config(hf.get("quantization_config"))
    config = ModelConfig.from_hf_config(hf)
    config.extra.pop("quantization_config", None)  # the loaded weights are dequantized
    return config, block, hf


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a model directory (one file, or the shards of the index)."""
    path = Path(path)
    if (path / WEIGHTS_NAME).is_file():
        return [path / WEIGHTS_NAME]
    if (path / INDEX_NAME).is_file():
        weight_map = json.loads((path / INDEX_NAME).read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path / INDEX_NAME}: no 'weight_map'")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if not (path / shard).is_file():
                raise CheckpointError(f"{path / INDEX_NAME} lists shard {shard!r}, which is "
                                      f"missing from {path}")
        return [path / shard for shard in shards]
    pickles = sorted(p.name for p in path.glob("*") if p.suffix in (".bin", ".pt", ".pth"))
    if pickles:
        raise CheckpointError(f"{path}: only pickle weights ({', '.join(pickles[:3])}); nanoseek "
                              "reads safetensors only (it never unpickles); convert them first, "
                              "e.g. transformers' from_pretrained + save_pretrained")
    raise CheckpointError(f"{path}: no weights ({WEIGHTS_NAME} or {INDEX_NAME})")


@dataclass
class _Header:
    """Name → (file, shape, safetensors dtype string) for every tensor on disk."""

    file: dict[str, Path] = field(default_factory=dict)
    shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtype: dict[str, str] = field(default_factory=dict)


def _read_headers(files: list[Path]) -> _Header:
    header = _Header()
    for file in files:
        with safe_open(file, framework="pt") as f:
            keys = f.keys()
            for key in keys:
                sl = f.get_slice(key)
                header.file[key] = file
                header.shape[key] = tuple(sl.get_shape())
                header.dtype[key] = sl.get_dtype()
    return header


# ==================================================================== planning the load
def _plan_load(config: ModelConfig, names: dict[str, torch.Tensor], aliases: dict[str, str],
               header: _Header, block: tuple[int, int]) -> tuple[Plan, list[str]]:
    """Map every on-disk key to model targets, checking shapes and dtypes from the headers.
    Returns the plan and the keys the model has no place for."""
    mtp_on_disk = {layer_index(k) for k in header.file if k.endswith(".eh_proj.weight")}
    plan: Plan = {}
    unexpected: list[str] = []
    for key in header.file:
        canonical = aliases.get(key, key)
        if canonical != key and canonical in header.file:
            continue  # e.g. a tied lm_head.weight stored next to the embedding: the embedding wins
        if skip_on_load(key, config, names, mtp_on_disk):
            continue
        targets = targets_for(key, names)
        if targets is None:
            unexpected.append(key)
            continue
        _check_tensor(key, header, block)
        want, got = expected_shape(targets[0], names), header.shape[key]
        if want != got:
            raise CheckpointError(f"{header.file[key]}: tensor {key} has shape {list(got)}, "
                                  f"the model expects {list(want)}; does config.json match?")
        for t in targets:
            t.name = aliases.get(t.name, t.name)
        plan[key] = targets
    return plan, unexpected


def _check_tensor(key: str, header: _Header, block: tuple[int, int]) -> None:
    dtype = header.dtype[key]
    if dtype not in _DTYPES:
        raise CheckpointError(f"{header.file[key]}: tensor {key} has unsupported dtype {dtype}; "
                              f"nanoseek reads {', '.join(_DTYPES)}")
    if dtype != "F8_E4M3":
        return
    scale = key + "_scale_inv"
    if not key.endswith(".weight") or scale not in header.file:
        raise CheckpointError(f"fp8 tensor {key} has no {scale} next to it")
    want = fp8_scale_shape(header.shape[key], block)
    if header.shape[scale] != want:
        raise CheckpointError(f"{scale}: shape {list(header.shape[scale])}, expected "
                              f"{list(want)} for block {list(block)}; check "
                              "quantization_config.weight_block_size")


def _raise_missing(path: Path, missing: list[str], config: ModelConfig, header: _Header) -> None:
    layers_on_disk = {layer_index(k) for k in header.file}
    mtp = [j for j in range(config.num_hidden_layers,
                            config.num_hidden_layers + config.num_nextn_predict_layers)
           if j not in layers_on_disk]
    if config.is_deepseek and mtp:
        raise CheckpointError(
            f"{path}: config.json has num_nextn_predict_layers="
            f"{config.num_nextn_predict_layers} but the checkpoint has no weights for MTP layer "
            f"model.layers.{mtp[0]}; set \"num_nextn_predict_layers\": 0 in config.json to "
            "load it without multi-token prediction")
    raise CheckpointError(f"{path}: {len(missing)} tensors missing from the checkpoint, e.g. "
                          f"{', '.join(missing[:5])}")


# ==================================================================== streaming the weights
def resolve_dtype(dtype: torch.dtype | str | None, hf: dict[str, Any]) -> torch.dtype:
    """The load dtype: ``dtype`` if given, else config.json's ``torch_dtype`` / ``dtype`` when
    float32 / bfloat16 / float16, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is not None:
        if dtype not in _LOAD_DTYPES:
            raise ValueError(f"dtype: {dtype!r} is not supported; use one of "
                             f"{', '.join(_LOAD_DTYPES)}")
        return _LOAD_DTYPES[dtype]
    declared = hf.get("torch_dtype") or hf.get("dtype")
    return _LOAD_DTYPES.get(declared, torch.float32)


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``model`` by ``value`` (no copy)."""
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = module._parameters.get(attr)
    if isinstance(value, nn.Parameter):  # an alias of an already loaded parameter
        module._parameters[attr] = value
    elif old is not None:
        module._parameters[attr] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        module._buffers[attr] = value


def _stream(model: nn.Module, plan: Plan, header: _Header, block: tuple[int, int],
            dtype: torch.dtype, device: torch.device, names: dict[str, torch.Tensor],
            progress: bool) -> None:
    """Read each planned tensor once, convert it and put it in place."""
    stacked: dict[str, torch.Tensor] = {}
    with ExitStack() as stack:
        handles: dict[Path, Any] = {}

        def read(key: str) -> torch.Tensor:
            file = header.file[key]
            if file not in handles:
                handles[file] = stack.enter_context(safe_open(file, framework="pt"))
            return handles[file].get_tensor(key)

        for key, targets in track(plan.items(), "loading weights", total=len(plan),
                                  console=Console(stderr=True), transient=True,
                                  disable=not progress):
            source = read(key)
            if source.dtype == torch.float8_e4m3fn:
                scale = read(key + "_scale_inv").to(device)
                source = dequantize_fp8_blockwise(source.to(device), scale, block)
            for t in targets:
                want = torch.float32 if KEEP_FP32.search(t.name) else dtype
                value = source if t.rows is None else source[:, t.rows]
                value = value.to(device=device, dtype=want).contiguous()
                if t.expert is None and t.rows is None:
                    _set_tensor(model, t.name, value)
                    continue
                if t.name not in stacked:
                    stacked[t.name] = torch.empty(names[t.name].shape, dtype=want, device=device)
                target = stacked[t.name] if t.expert is None else stacked[t.name][t.expert]
                target.copy_(value)
    for name, value in stacked.items():
        _set_tensor(model, name, value)


def _finish(model: nn.Module, config: ModelConfig, aliases: dict[str, str],
            device: torch.device) -> None:
    """Re-tie shared parameters, rebuild non-persistent buffers, check nothing is left on meta."""
    from nanoseek.model.layers import RotaryEmbedding, rope_inv_freq

    for name, canonical in aliases.items():
        if name != canonical:
            _set_tensor(model, name, model.get_parameter(canonical))
    for module in model.modules():  # RoPE tables kept as a non-persistent buffer, if any
        inv_freq = module._buffers.get("inv_freq")
        if isinstance(module, RotaryEmbedding) and inv_freq is not None and inv_freq.is_meta:
            module._buffers["inv_freq"] = rope_inv_freq(config)[0].to(device)
    for name, t in model.named_buffers():
        if t.is_meta and is_optional(name, config):
            _set_tensor(model, name, torch.zeros(t.shape, dtype=torch.float32, device=device))
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:
            raise RuntimeError(f"load_pretrained: {name} was not materialised (a non-persistent "
                               "buffer load_pretrained does not know how to rebuild)")


def load_pretrained(path: str | Path, dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None, *,
                    progress: bool = False) -> nn.Module:
    """Load a Hugging Face model directory into a nanoseek model (in eval mode).

    ``dtype`` None: config.json's ``torch_dtype`` if float32 / bfloat16 / float16, else
    float32. Router weights (``mlp.gate.weight``, ``e_score_correction_bias``) stay float32.
    ``progress``: a rich bar on stderr (pass ``sys.stderr.isatty()`` from a CLI).
    """
    from nanoseek.model import build_model

    path = Path(path)
    config, block, hf = read_config(path)
    dtype, device = resolve_dtype(dtype, hf), torch.device(device or "cpu")
    header = _read_headers(weight_files(path))
    with torch.device("meta"):
        model = build_model(config)
    names = model.state_dict(keep_vars=True)
    first_name: dict[int, str] = {}
    aliases = {n: first_name.setdefault(id(t), n) for n, t in names.items()}
    plan, unexpected = _plan_load(config, names, aliases, header, block or DEFAULT_BLOCK)
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} tensors the model has no place for, "
                              f"e.g. {', '.join(unexpected[:5])}; does config.json match the "
                              "weights?")
    missing = [m for m in missing_keys(plan, names, aliases) if not is_optional(m, config)]
    if missing:
        _raise_missing(path, missing, config, header)
    _stream(model, plan, header, block or DEFAULT_BLOCK, dtype, device, names, progress)
    _finish(model, config, aliases, device)
    return model.eval()
