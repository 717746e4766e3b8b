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

This module writes model directories (``save_pretrained``) and gathers the public names;
loading is in ``nanoseek.checkpoint_load``, the name mapping in ``nanoseek.checkpoint_keys``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from nanoseek.checkpoint_keys import KEEP_FP32, hf_state_dict
from nanoseek.checkpoint_load import (
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_pretrained,
    read_config,
    resolve_dtype,
    weight_files,
)
from nanoseek.config import ModelConfig

__all__ = [
    "CONFIG_NAME",
    "GENERATION_CONFIG_NAME",
    "INDEX_NAME",
    "KEEP_FP32",
    "WEIGHTS_NAME",
    "CheckpointError",
    "PretrainedMixin",
    "hf_state_dict",
    "load_pretrained",
    "parse_size",
    "read_config",
    "resolve_dtype",
    "save_pretrained",
    "weight_files",
]

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SHARD_NAME = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")


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
