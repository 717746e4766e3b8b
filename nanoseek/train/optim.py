"""AdamW with DeepSeek's parameter groups, learning-rate and batch-size schedules, and the
auxiliary-loss-free balance-bias update.

* ``param_groups``: weight decay on matrices (``dim >= 2``: linear weights, embeddings,
  stacked experts, router weights), none on norms and biases; the router's
  ``e_score_correction_bias`` is a buffer, never seen by the optimizer.
* ``lr_at(step, total, cfg)``: ``v3`` / ``wsd`` / ``cosine`` / ``constant`` shapes, a pure
  function of the step (so the "scheduler state" is the step alone).
* ``piecewise(spec, progress)``: values that change during training (MTP λ, bias speed γ).
* ``BatchPlan``: micro-batches per optimizer step, with the optional batch-size ramp.
* ``ExpertBalancer``: counts the tokens each routed expert receives over all micro-batches
  of a step (forward hooks), sums them over ranks and moves every router's bias by
  ``-γ·sign(load − mean load)`` after the optimizer step (DeepSeek-V3 §2.1.2).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from nanoseek.distributed import all_reduce_sum_
from nanoseek.train.config import OptimConfig, Piecewise

SCHEDULES = ("v3", "wsd", "cosine", "constant")
# (decay_start, decay_end, tail_start) defaults per schedule, as fractions of the run
_SCHEDULE_DEFAULTS = {"v3": (0.676, 0.966, 0.989), "wsd": (0.8, 1.0, None),
                      "cosine": (0.0, 1.0, None), "constant": (1.0, 1.0, None)}


# -------------------------------------------------------------------- optimizer
def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: ``decay`` (parameters with ``dim >= 2``) and ``no_decay`` (norm
    weights, biases: every 1-D parameter). Each group records its parameter names."""
    decay, no_decay, names = [], [], {"decay": [], "no_decay": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "decay" if p.dim() >= 2 else "no_decay"
        (decay if kind == "decay" else no_decay).append(p)
        names[kind].append(name)
    return [
        {"params": decay, "weight_decay": weight_decay, "names": names["decay"]},
        {"params": no_decay, "weight_decay": 0.0, "names": names["no_decay"]},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW(β1, β2, eps, weight decay by group) at ``cfg.lr`` (the loop sets the lr per step).

    Uses the fused kernel (CPU and CUDA; several times faster than the per-tensor loop on CPU)
    and falls back to the default implementation where it is not supported.
    """
    groups = param_groups(model, cfg.weight_decay)
    for g in groups:
        g.pop("names")
    kwargs = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# -------------------------------------------------------------------- schedules
def validate_optim(cfg: OptimConfig) -> None:
    """Raise ``ValueError`` naming the ``[optim]`` field and the fix."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule: unknown {cfg.schedule!r}; use one of "
                         f"{', '.join(SCHEDULES)}")
    if cfg.lr <= 0:
        raise ValueError(f"optim.lr: must be positive, got {cfg.lr}")
    if cfg.warmup_steps < 0:
        raise ValueError("optim.warmup_steps: must be >= 0")
    start, end, _ = schedule_points(cfg)
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"optim.decay_start / decay_end: need 0 <= start ({start}) <= end "
                         f"({end}) <= 1 (fractions of the run)")
    piecewise(cfg.bias_update_speed, 0.0, "optim.bias_update_speed")


def schedule_points(cfg: OptimConfig) -> tuple[float, float, float | None]:
    """(decay_start, decay_end, tail_start) fractions, defaults filled for the schedule."""
    d_start, d_end, d_tail = _SCHEDULE_DEFAULTS[cfg.schedule]
    start = d_start if cfg.decay_start is None else cfg.decay_start
    end = d_end if cfg.decay_end is None else cfg.decay_end
    tail = d_tail if cfg.tail_start is None else cfg.tail_start
    return start, end, tail


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warmup is linear from ``lr/warmup`` at step 0 to ``lr`` at step ``warmup_steps - 1``.
    After warmup the shape follows ``cfg.schedule`` over the fraction ``step / total``.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    frac = step / max(total_steps, 1)
    start, end, tail = schedule_points(cfg)
    if cfg.schedule == "cosine":  # decay starts where warmup ends
        start = max(start, cfg.warmup_steps / max(total_steps, 1))
    low = cfg.lr * cfg.min_lr_ratio
    if tail is not None and frac >= tail:
        return cfg.lr * cfg.tail_lr_ratio
    if frac < start:
        return cfg.lr
    if frac >= end or end <= start:
        return low
    t = (frac - start) / (end - start)
    if cfg.schedule == "wsd":
        return cfg.lr + (low - cfg.lr) * t
    return low + (cfg.lr - low) * 0.5 * (1.0 + math.cos(math.pi * t))


def piecewise(spec: Piecewise, progress: float, name: str = "value") -> float:
    """The value of ``spec`` at ``progress`` (fraction of the run, 0..1): a number, or
    ``[[start, value], ...]`` where each value holds from its start on."""
    if isinstance(spec, int | float):
        return float(spec)
    if not spec or any(len(p) != 2 for p in spec) or spec[0][0] != 0:
        raise ValueError(f"{name}: expected a number or [[0, v0], [fraction, v1], ...], "
                         f"got {spec!r}")
    starts = [p[0] for p in spec]
    if starts != sorted(starts):
        raise ValueError(f"{name}: start fractions must ascend, got {starts}")
    value = spec[0][1]
    for start, v in spec:
        if progress >= start:
            value = v
    return float(value)


# -------------------------------------------------------------------- batch size
@dataclass(frozen=True)
class BatchPlan:
    """How many micro-batches each rank runs per optimizer step.

    ``unit`` = tokens one micro-batch step adds over all ranks (micro_batch · seq_len ·
    world_size); the global batch is a multiple of it. With a ramp, the batch grows
    linearly with trained tokens from ``ramp_start`` to ``batch_tokens`` over the first
    ``ramp_tokens`` tokens, rounded down to a multiple of ``unit``.
    """

    unit: int
    batch_tokens: int
    ramp_start: int = 0
    ramp_tokens: int = 0

    @classmethod
    def create(cls, micro_batch: int, seq_len: int, world_size: int, batch_tokens: int,
               ramp_start: int = 0, ramp_tokens: int = 0) -> BatchPlan:
        unit = micro_batch * seq_len * world_size
        if micro_batch <= 0 or seq_len <= 0:
            raise ValueError("train.micro_batch and train.seq_len: must be positive")
        batch_tokens = batch_tokens or unit
        if batch_tokens % unit:
            lower = max(unit, batch_tokens // unit * unit)
            raise ValueError(
                f"train.batch_tokens: {batch_tokens} is not a multiple of micro_batch × "
                f"seq_len × world_size = {unit}; use {lower} or {lower + unit}")
        if ramp_start and not 0 < ramp_start <= batch_tokens:
            raise ValueError(f"train.batch_ramp_start: must be in (0, batch_tokens = "
                             f"{batch_tokens}], got {ramp_start}")
        if ramp_start and ramp_tokens <= 0:
            raise ValueError("train.batch_ramp_tokens: must be > 0 when batch_ramp_start is set")
        return cls(unit, batch_tokens, ramp_start, ramp_tokens)

    def tokens_at(self, tokens_seen: int) -> int:
        """Global tokens in the step that starts after ``tokens_seen`` trained tokens."""
        if not self.ramp_start or tokens_seen >= self.ramp_tokens:
            return self.batch_tokens
        want = self.ramp_start + (self.batch_tokens - self.ramp_start) * (
            tokens_seen / self.ramp_tokens)
        return max(self.unit, int(want) // self.unit * self.unit)

    def accum_at(self, tokens_seen: int) -> int:
        """Micro-batches per rank for that step."""
        return self.tokens_at(tokens_seen) // self.unit

    def total_steps(self, steps: int, tokens: int) -> tuple[int, int]:
        """``(steps, tokens)`` of the whole run from either budget (the other one derived)."""
        if steps > 0:
            seen = 0
            for _ in range(steps):
                seen += self.tokens_at(seen)
            return steps, seen
        if tokens <= 0:
            raise ValueError("train.steps / train.tokens: set one of them (> 0)")
        seen, n = 0, 0
        while seen < tokens:
            seen += self.tokens_at(seen)
            n += 1
        return n, seen


# -------------------------------------------------------------------- balance bias
class ExpertBalancer:
    """Auxiliary-loss-free load balancing for every router with an ``e_score_correction_bias``.

    While ``recording()`` is active (the trainer's forward passes, not recomputation in the
    backward or evaluation), a forward hook adds each MoE layer's expert counts to an
    accumulator; ``step(gamma)`` all-reduces the counts ``[L, E]`` over ranks and applies
    ``bias -= gamma * sign(load - mean(load))`` per layer, then clears the counts.
    """

    def __init__(self, model: nn.Module) -> None:
        from nanoseek.model.moe import DeepseekMoE

        self.layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, DeepseekMoE)]
        self.layer_ids = [m.layer_idx for m in self.layers]
        self.layer_names = [_layer_name(m) for m in self.layers]
        self._counts: list[torch.Tensor | None] = [None] * len(self.layers)
        self._recording = False
        self.last_loads: torch.Tensor | None = None  # [L, E] float, summed over ranks
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in
                         enumerate(self.layers)]

    def _hook(self, i: int):
        def hook(module: nn.Module, args, output) -> None:
            if not self._recording:
                return
            counts = output[1].counts.detach()
            prev = self._counts[i]
            self._counts[i] = counts.clone() if prev is None else prev + counts
        return hook

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Count routed tokens of the forwards run inside this block."""
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def add_counts(self, counts_LE: torch.Tensor) -> None:
        """Add counts by hand (``[L, E]``, layers in ``self.layers`` order)."""
        for i in range(len(self.layers)):
            prev = self._counts[i]
            self._counts[i] = counts_LE[i].clone() if prev is None else prev + counts_LE[i]

    @torch.no_grad()
    def step(self, gamma: float) -> torch.Tensor | None:
        """Sum the counts over ranks, move the biases by γ, clear the counts.

        Returns the loads ``[L, E]`` (float, all ranks' micro-batches of this step), or None
        when the model has no MoE layer. Every rank must call it (it is a collective).
        """
        if not self.layers:
            return None
        e = self.layers[0].gate.weight.shape[0]
        device = self.layers[0].gate.weight.device
        loads = torch.stack([c.float() if c is not None else torch.zeros(e, device=device)
                             for c in self._counts])
        all_reduce_sum_(loads)
        if gamma:
            for moe, load in zip(self.layers, loads, strict=True):
                bias = moe.gate.e_score_correction_bias
                if bias is not None:
                    bias.sub_(gamma * torch.sign(load - load.mean()).to(bias))
        self._counts = [None] * len(self.layers)
        self.last_loads = loads.cpu()
        return self.last_loads

    def remove(self) -> None:
        """Detach the hooks."""
        for h in self._handles:
            h.remove()


def _layer_name(moe: nn.Module) -> str:
    """``layer 3``, or ``MTP 1`` for the first multi-token-prediction module."""
    n_main = moe.gate.config.num_hidden_layers
    if moe.layer_idx >= n_main:
        return f"MTP {moe.layer_idx - n_main + 1}"
    return f"layer {moe.layer_idx}"
