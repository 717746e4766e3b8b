"""Process groups, DDP / FSDP2 wrapping and rank-aware helpers, on PyTorch's own stack.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); without those variables everything runs as one process and every helper
here is a no-op. Backend: NCCL when the processes drive CUDA devices, gloo on CPU.

Data parallelism comes in two flavours, chosen by ``wrap_model(model, mode)``:

* ``ddp``: every rank holds the whole model; gradients are all-reduced (bucketed, overlapped
  with the backward) on the last micro-batch of an accumulation window.
* ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and
  optimizer state are sharded over ranks (ZeRO-3); every decoder layer is one unit that is
  all-gathered for its forward/backward and resharded after.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

PARALLEL_MODES = ("ddp", "fsdp")
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank among ``world_size`` and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = _CPU

    @property
    def is_main(self) -> bool:
        """True on the one rank that logs and writes shared files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:{local_rank}`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device: 'cuda' asked for but CUDA is not available; "
                             "use 'cpu' or 'auto'")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"train.device: unknown device {device!r}; use auto, cpu or cuda")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (if any) and pick this rank's device."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    """Leave the process group (safe to call when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process); returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place; returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` from rank ``src`` on every rank (identity in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -------------------------------------------------------------------- wrapping
def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers (``model.layers``: MTP layers included)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards one by one, children before parents: each decoder layer, and
    for an MTP layer also the parts the model calls outside its ``forward`` (``enorm``,
    ``hnorm``, ``eh_proj``, ``shared_head.norm``), so each is gathered when it is called."""
    units: list[nn.Module] = []
    for layer in decoder_layers(model):
        for name in ("enorm", "hnorm", "eh_proj", "shared_head.norm"):
            try:
                units.append(layer.get_submodule(name))
            except AttributeError:
                continue
        units.append(layer)
    return units


def wrap_model(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """Wrap ``model`` (already on ``info.device``) for data parallelism over all ranks.

    ``mode``: ``ddp`` or ``fsdp`` (FSDP2 ``fully_shard`` per decoder layer, then the root).
    Returns ``model`` unchanged in a single process.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"train.parallel: unknown mode {mode!r}; use one of "
                         f"{', '.join(PARALLEL_MODES)}")
    if not info.is_distributed:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        # Buffers (RoPE tables, the balance bias) are kept equal on every rank by construction.
        return DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    from torch.distributed.fsdp import fully_shard

    for unit in shard_units(model):
        fully_shard(unit)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module under DDP / ``torch.compile`` wrappers (FSDP2 wraps in place)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def is_fsdp(model: nn.Module) -> bool:
    """True if ``fully_shard`` was applied to ``model`` (its class gains an FSDP prefix)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(unwrap(model), FSDPModule)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter inside this block unless ``enabled``
    (gradient accumulation: only the last micro-batch synchronises)."""
    if enabled:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    inner = unwrap(model)
    if is_fsdp(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
        return
    yield


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm to ``max_norm`` (``<= 0``: measure only); returns the
    norm before clipping. Works with sharded (DTensor) gradients."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    limit = max_norm if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, limit, foreach=True)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
