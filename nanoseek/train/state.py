"""Trainer checkpoints: an HF model directory plus a sidecar with everything needed to resume
exactly (optimizer, step and token counters, data cursor, every RNG).

Layout under ``<out_dir>/checkpoints/``::

    step_00000100/
      model/      config.json, model.safetensors, tokenizer files: an ordinary HF model dir
      trainer/    meta.json (format, step, world size), state.pt (optimizer + loop state),
                  rank00000.pt … (per rank: RNG states and data cursor)

A checkpoint is written into ``.step_00000100.tmp`` and renamed into place only once every
file is complete, so a crash (even inside a save) leaves the previous checkpoints intact and
no half-written one that a resume could pick; the oldest beyond ``keep_last`` are then
deleted. Rank 0 writes the model and optimizer (gathered to full tensors under FSDP2), each
rank its own RNG/data file; multi-node runs need ``out_dir`` on a shared filesystem. Resuming
requires the same world size.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nanoseek.checkpoint import CheckpointError, load_pretrained, save_pretrained
from nanoseek.distributed import DistInfo, barrier, is_fsdp, unwrap

FORMAT = "nanoseek-trainer"
VERSION = 1
FAULT_ENV = "NANOSEEK_FAULT"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
log = logging.getLogger(__name__)


# -------------------------------------------------------------------- fault injection
def maybe_fault(point: str, step: int) -> None:
    """Test hook: ``NANOSEEK_FAULT=<point>:<step>`` kills this process (SIGKILL) when it
    reaches ``point`` (``after_step`` or ``in_save``) at ``step``. Does nothing otherwise."""
    spec = os.environ.get(FAULT_ENV, "")
    if spec and spec == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# -------------------------------------------------------------------- finding checkpoints
def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_meta(path: Path) -> dict[str, Any]:
    """``trainer/meta.json`` of a checkpoint, or ``CheckpointError`` if ``path`` is not one."""
    meta_file = path / "trainer" / "meta.json"
    if not path.is_dir():
        raise CheckpointError(f"--resume: {path} does not exist or is not a directory")
    if not meta_file.is_file():
        hint = ""
        if (path / "config.json").is_file():
            hint = (f"; it looks like a model directory: to start training from it, set "
                    f"[model] path = \"{path}\" instead of resuming")
        raise CheckpointError(f"--resume: {path} is not a nanoseek training checkpoint (no "
                              f"trainer/meta.json){hint}")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"--resume: {meta_file} is corrupt ({e})") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise CheckpointError(f"--resume: {meta_file} has format {meta.get('format')!r} "
                              f"version {meta.get('version')!r}; expected {FORMAT!r} "
                              f"version {VERSION}")
    return meta


# -------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every RNG this process uses: Python, NumPy, torch CPU and CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.copy()), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """Lists back to tuples (``random.setstate`` wants nested tuples)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x


# -------------------------------------------------------------------- gathering state
def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP2: the full model state dict on CPU, on rank 0 (a collective: every rank
    calls). Otherwise None (the module itself holds full tensors)."""
    if not is_fsdp(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, full CPU tensors on rank 0 (a collective
    under FSDP2)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def export_module(model: nn.Module, model_sd: dict[str, torch.Tensor] | None) -> nn.Module:
    """A module holding the full weights, for ``save_pretrained`` on rank 0: the model
    itself, or (FSDP2) a meta-device twin given the gathered tensors."""
    if model_sd is None:
        return unwrap(model)
    from nanoseek.model import build_model

    with torch.device("meta"):
        twin = build_model(unwrap(model).config)
    twin.load_state_dict(model_sd, assign=True)
    return twin


def export_model(model: nn.Module, path: Path, info: DistInfo, tokenizer: Any = None) -> None:
    """Write ``model`` (plus tokenizer) as an HF directory at ``path`` (every rank calls)."""
    model_sd = gather_model_state(model)
    if info.is_main:
        save_pretrained(export_module(model, model_sd), path)
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
    barrier()


# -------------------------------------------------------------------- saving
def save_checkpoint(root: Path, step: int, *, model: nn.Module,
                    optimizer: torch.optim.Optimizer, loop_state: dict[str, Any],
                    data_state: dict[str, Any], info: DistInfo, keep_last: int,
                    tokenizer: Any = None, meta: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (every rank must call); returns its path."""
    final, tmp = root / f"step_{step:08d}", root / f".step_{step:08d}.tmp"
    model_sd, optim_sd = gather_model_state(model), gather_optimizer_state(model, optimizer)
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "trainer").mkdir(parents=True)
        save_pretrained(export_module(model, model_sd), tmp / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "model")
        torch.save({"optimizer": optim_sd, "loop": loop_state}, tmp / "trainer" / "state.pt")
    barrier()
    torch.save({"rng": rng_state(), "data": data_state},
               tmp / "trainer" / f"rank{info.rank:05d}.pt")
    maybe_fault("in_save", step)
    barrier()
    if info.is_main:
        record = {"format": FORMAT, "version": VERSION, "step": step,
                  "world_size": info.world_size, **(meta or {})}
        (tmp / "trainer" / "meta.json").write_text(json.dumps(record, indent=2) + "\n")
        _replace_dir(tmp, final)
        set_aside_later_steps(root, step)
        for _, old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def set_aside_later_steps(root: Path, step: int) -> list[Path]:
    """Move checkpoints of steps after ``step`` to ``root/abandoned/``: a run resumed from an
    earlier checkpoint (say, before a loss spike) has left them behind, and kept among the
    others they would be ``--resume latest`` and push the new ones out of keep-last-N.
    Returns their new paths."""
    moved = []
    for later_step, path in list_checkpoints(root):
        if later_step > step:
            dest = root / "abandoned" / path.name
            dest.parent.mkdir(exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(path, dest)
            log.warning("checkpoint %s is from a run this one resumed before; moved to %s",
                        path.name, dest)
            moved.append(dest)
    return moved


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        trash = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(dst, trash)
        os.replace(src, dst)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(src, dst)


def clean_partial(root: Path) -> None:
    """Remove temporary folders left by a save that was interrupted."""
    if root.is_dir():
        for p in root.glob(".step_*"):
            shutil.rmtree(p, ignore_errors=True)


# -------------------------------------------------------------------- loading
def _torch_load(file: Path) -> Any:
    if not file.is_file():
        raise CheckpointError(f"--resume: {file} is missing; the checkpoint is incomplete")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # any unpickling failure means a corrupt file
        raise CheckpointError(f"--resume: {file} is corrupt or not a nanoseek trainer file "
                              f"({type(e).__name__}: {e})") from None


def load_model_weights(model: nn.Module, path: Path) -> None:
    """Copy the weights of checkpoint ``path``'s model dir into ``model`` (unwrapped)."""
    try:
        loaded = load_pretrained(path / "model", dtype=torch.float32)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors / JSON errors of a damaged file
        raise CheckpointError(f"--resume: cannot read the model in {path / 'model'} "
                              f"({type(e).__name__}: {e})") from None
    if not same_architecture(loaded.config, model.config):
        raise CheckpointError(f"--resume: the model in {path} has a different config.json "
                              "from the one this run builds; resume with the same [model] "
                              "settings")
    model.load_state_dict(loaded.state_dict())


def same_architecture(a: Any, b: Any) -> bool:
    """True if two ``ModelConfig`` agree on every modelled field (``extra`` keys such as
    ``torch_dtype`` aside)."""
    da, db = a.to_dict(), b.to_dict()
    da.pop("extra"), db.pop("extra")
    return da == db


def load_trainer_files(path: Path, info: DistInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state.pt contents, this rank's rankNNNNN.pt contents)`` of checkpoint ``path``."""
    meta = read_meta(path)
    if meta.get("world_size") != info.world_size:
        raise CheckpointError(f"--resume: {path} was written by {meta.get('world_size')} "
                              f"processes, this run has {info.world_size}; resume with the "
                              "same number of processes")
    main = _torch_load(path / "trainer" / "state.pt")
    mine = _torch_load(path / "trainer" / f"rank{info.rank:05d}.pt")
    if not isinstance(main, dict) or "optimizer" not in main or "loop" not in main:
        raise CheckpointError(f"--resume: {path / 'trainer' / 'state.pt'} lacks optimizer/loop")
    return main, mine


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any]) -> None:
    """Load a (full, name-keyed) optimizer state dict into ``optimizer`` (sharding it under
    FSDP2). Parameters that never received a gradient have no state; that is allowed."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    try:
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, strict=False))
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"--resume: the optimizer state does not fit this model "
                              f"({type(e).__name__}: {e})") from None
