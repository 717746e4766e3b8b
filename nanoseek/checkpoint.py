"""Hugging Face checkpoints in and out: ``load_pretrained`` / ``save_pretrained``.

A model directory holds ``config.json``, ``generation_config.json`` and the weights as
``model.safetensors`` or shards listed in ``model.safetensors.index.json``. Tensor names are the
HF names, which are nanoseek's module names, with three exceptions handled here:

* DeepSeek routed experts: on disk one tensor per expert,
  ``model.layers.{i}.mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight``; in the model stacked
  ``mlp.experts.{gate_proj,up_proj}`` ``[E, I, D]`` and ``mlp.experts.down_proj`` ``[E, D, I]``.
  transformers 5's in-memory layout (``experts.gate_up_proj [E, 2I, D]``, gate rows first, and
  ``experts.down_proj [E, D, I]``) is read too; transformers 5.24 itself writes per-expert keys.
* DeepSeek MTP layers ``model.layers.{n + k}`` carry copies of the embedding and the head
  (``embed_tokens.weight``, ``shared_head.head.weight``): skipped on load, written on save.
* Tied embeddings: ``lm_head.weight`` is not written and need not be on disk.

Loading builds the model on the ``meta`` device and streams one tensor at a time out of the
memory-mapped safetensors files, so the weights are never held twice. FP8 block-quantized
weights (DeepSeek's release format, see :mod:`nanoseek.fp8`) are dequantized on the way in.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from nanoseek.config import ARCHITECTURES, ModelConfig
from nanoseek.fp8 import DEFAULT_BLOCK, dequantize_fp8_blockwise, parse_quantization_config
from nanoseek.fp8 import scale_shape as fp8_scale_shape

CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# Router weights stay float32 whatever dtype the rest of the model is loaded in.
KEEP_FP32 = re.compile(r"(\.mlp\.gate\.weight|\.e_score_correction_bias)$")
_EXPERT_KEY = re.compile(r"^(.+\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_STACKED_NAME = re.compile(r"^(.+\.mlp\.experts)\.(gate_proj|up_proj|down_proj)$")
_FUSED_KEY = re.compile(r"^(.+\.mlp\.experts)\.gate_up_proj$")
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_MTP_COPIES = ("embed_tokens.weight", "shared_head.head.weight")
_IGNORED = re.compile(r"(\.rotary_emb\.inv_freq|\.weight_scale_inv)$")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
           "BF16": torch.bfloat16, "F8_E4M3": torch.float8_e4m3fn}
_LOAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


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
@dataclass
class _Target:
    """Where (part of) an on-disk tensor goes: model tensor ``name``, optionally slice
    ``expert`` of a stacked ``[E, ...]`` tensor, taking ``source[:, rows]`` (fused layout)."""

    name: str
    expert: int | None = None
    rows: slice | None = None


def _layer_index(key: str) -> int | None:
    m = _LAYER_KEY.match(key)
    return int(m.group(1)) if m else None


def _skip(key: str, config: ModelConfig, names: dict[str, torch.Tensor],
          mtp_on_disk: set[int]) -> bool:
    """Keys that are on disk but deliberately not loaded."""
    if _IGNORED.search(key) or (key not in names and _optional(key, config)):
        return True
    if key == "lm_head.weight" and config.tie_word_embeddings and key not in names:
        return True
    layer = _layer_index(key)
    if layer is None or not config.is_deepseek or layer < config.num_hidden_layers:
        return False
    rest = _LAYER_KEY.match(key).group(2)
    mtp_end = config.num_hidden_layers + config.num_nextn_predict_layers
    return rest in _MTP_COPIES or (layer >= mtp_end and layer in mtp_on_disk)


def _targets_for(key: str, names: dict[str, torch.Tensor]) -> list[_Target] | None:
    """Model targets of one on-disk key, or None if the model has no place for it."""
    if key in names:
        return [_Target(key)]
    m = _EXPERT_KEY.match(key)
    if m and f"{m.group(1)}.{m.group(3)}" in names:
        stacked = f"{m.group(1)}.{m.group(3)}"
        if int(m.group(2)) < names[stacked].shape[0]:
            return [_Target(stacked, expert=int(m.group(2)))]
    m = _FUSED_KEY.match(key)
    if m and f"{m.group(1)}.gate_proj" in names:
        inter = names[f"{m.group(1)}.gate_proj"].shape[1]
        return [_Target(f"{m.group(1)}.gate_proj", rows=slice(0, inter)),
                _Target(f"{m.group(1)}.up_proj", rows=slice(inter, 2 * inter))]
    return None


def _expected_shape(target: _Target, names: dict[str, torch.Tensor]) -> tuple[int, ...]:
    shape = tuple(names[target.name].shape)
    if target.expert is not None:
        return shape[1:]
    if target.rows is not None:  # the fused [E, 2I, D] tensor both halves come from
        return (shape[0], 2 * shape[1], *shape[2:])
    return shape


_Plan = dict[str, list[_Target]]  # on-disk key → where it goes


def _plan_load(config: ModelConfig, names: dict[str, torch.Tensor], aliases: dict[str, str],
               header: _Header, block: tuple[int, int]) -> tuple[_Plan, list[str]]:
    """Map every on-disk key to model targets, checking shapes and dtypes from the headers.
    Returns the plan and the keys the model has no place for."""
    mtp_on_disk = {_layer_index(k) for k in header.file if k.endswith(".eh_proj.weight")}
    plan: _Plan = {}
    unexpected: list[str] = []
    for key in header.file:
        canonical = aliases.get(key, key)
        if canonical != key and canonical in header.file:
            continue  # e.g. a tied lm_head.weight stored next to the embedding: the embedding wins
        if _skip(key, config, names, mtp_on_disk):
            continue
        targets = _targets_for(key, names)
        if targets is None:
            unexpected.append(key)
            continue
        _check_tensor(key, header, block)
        want, got = _expected_shape(targets[0], names), header.shape[key]
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


def _missing(plan: _Plan, names: dict[str, torch.Tensor], aliases: dict[str, str]) -> list[str]:
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


def _optional(name: str, config: ModelConfig) -> bool:
    """DeepSeek-V2 checkpoints have no correction bias (only ``noaux_tc`` routing uses it)."""
    return name.endswith(".e_score_correction_bias") and config.topk_method != "noaux_tc"


def _raise_missing(path: Path, missing: list[str], config: ModelConfig, header: _Header) -> None:
    layers_on_disk = {_layer_index(k) for k in header.file}
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


def _stream(model: nn.Module, plan: _Plan, header: _Header, block: tuple[int, int],
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
        if t.is_meta and _optional(name, config):
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
    missing = [m for m in _missing(plan, names, aliases) if not _optional(m, config)]
    if missing:
        _raise_missing(path, missing, config, header)
    _stream(model, plan, header, block or DEFAULT_BLOCK, dtype, device, names, progress)
    _finish(model, config, aliases, device)
    return model.eval()


# ==================================================================== saving
def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"`` (10^9), ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size: must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not m or m.group(2) not in _SIZE_UNITS or float(m.group(1)) <= 0:
        raise ValueError(f"max_shard_size: cannot read {size!r}; use bytes or e.g. '5GB', '500MB'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


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


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Greedy packing in order; a tensor larger than ``max_bytes`` gets a shard of its own."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _owned_cpu(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """CPU tensors for one shard, copying views and repeats (safetensors refuses shared memory)."""
    seen: set[int] = set()
    out = {}
    for name in names:
        t = tensors[name].detach()
        ptr = t.untyped_storage().data_ptr()
        whole = t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
        if t.device.type != "cpu":
            t = t.cpu()
        elif ptr in seen or not whole or not t.is_contiguous():
            t = t.contiguous().clone()
        seen.add(ptr)
        out[name] = t
    return out


def _model_dtype(model: nn.Module) -> torch.dtype:
    counts: Counter[torch.dtype] = Counter()
    for name, p in model.named_parameters():
        if p.is_floating_point() and not KEEP_FP32.search(name):
            counts[p.dtype] += p.numel()
    return counts.most_common(1)[0][0] if counts else torch.float32


def _write_json(file: Path, data: dict[str, Any]) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _config_files(model: nn.Module, path: Path, tmp: Path) -> None:
    config: ModelConfig = model.config
    hf = config.to_hf_config()
    hf.pop("quantization_config", None)
    hf["torch_dtype"] = str(_model_dtype(model)).removeprefix("torch.")
    if "dtype" in hf:
        hf["dtype"] = hf["torch_dtype"]
    _write_json(tmp / CONFIG_NAME, hf)
    gen: dict[str, Any] = {"_from_model_config": True}
    if (path / GENERATION_CONFIG_NAME).is_file():  # keep sampling defaults written by others
        gen = json.loads((path / GENERATION_CONFIG_NAME).read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(config, key) is not None:
            gen[key] = getattr(config, key)
    _write_json(tmp / GENERATION_CONFIG_NAME, gen)


def _weight_files_out(model: nn.Module, tmp: Path, max_bytes: int) -> list[str]:
    tensors = hf_state_dict(model)
    shards = _shards(tensors, max_bytes)
    if len(shards) == 1:
        save_file(_owned_cpu(tensors, shards[0]), tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    files, weight_map = [], {}
    for i, names in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(_owned_cpu(tensors, names), tmp / file, metadata={"format": "pt"})
        files.append(file)
        weight_map.update(dict.fromkeys(names, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(tmp / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    return [*files, INDEX_NAME]


def _publish(tmp: Path, path: Path, weights: list[str]) -> None:
    """Move the finished files into ``path``: the whole directory at once when it is new,
    else file by file (os.replace), weights first, dropping stale weight files, configs last."""
    if not path.exists():
        os.replace(tmp, path)
        return
    for name in weights:
        os.replace(tmp / name, path / name)
    for old in path.iterdir():
        stale = old.name in (WEIGHTS_NAME, INDEX_NAME) or _SHARD_NAME.match(old.name)
        if stale and old.name not in weights:
            old.unlink()
    for name in (CONFIG_NAME, GENERATION_CONFIG_NAME):
        os.replace(tmp / name, path / name)
    tmp.rmdir()


def save_pretrained(model: nn.Module, path: str | Path, max_shard_size: int | str = "5GB",
                    safe_serialization: bool = True) -> None:
    """Write ``model`` as a Hugging Face model directory at ``path``.

    Files are written into a temporary directory next to ``path`` and renamed into place, so a
    crash never leaves a half-written model. Other files already in ``path`` (tokenizer, …) stay.
    """
    if not safe_serialization:
        raise ValueError("safe_serialization: nanoseek writes safetensors only; pass True")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"save_pretrained: {path} exists and is not a directory")
    max_bytes = parse_size(max_shard_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        weights = _weight_files_out(model, tmp, max_bytes)
        _config_files(model, path, tmp)
        _publish(tmp, path, weights)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for model classes:
    ``class DenseForCausalLM(PretrainedMixin, nn.Module)``."""

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB",
                        safe_serialization: bool = True) -> None:
        save_pretrained(self, path, max_shard_size, safe_serialization)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype | str | None = None,
                        device: torch.device | str | None = None) -> nn.Module:
        model = load_pretrained(path, dtype=dtype, device=device)
        if not isinstance(model, cls):
            raise CheckpointError(f"{path} holds a {type(model).__name__} "
                                  f"({model.config.model_type}), not a {cls.__name__}")
        return model
