"""The shared training loop: one ``Trainer`` for pretraining, SFT, distillation and GRPO.

A stage supplies a model, a ``loss_fn(model, batch, progress) -> (loss, metrics)`` and a
``BatchSource`` (``next_batch()``, ``state_dict()``, ``load_state_dict()``); the trainer owns
the rest::

    trainer = Trainer(model, optim_cfg, run_cfg, loss_fn, loader, eval_fn=..., tokenizer=tok)
    trainer.fit()

One optimizer step (``train_step``): for each of the step's micro-batches (gradient
accumulation, gradients synchronised only on the last), forward under bf16 autocast when
enabled, ``(loss * weight).backward()``; then the loss is averaged over ranks and checked
(NaN/Inf stops the run before the weights change, so the last checkpoint stays good), the
gradient norm is clipped, AdamW steps at ``lr_at(step)``, and the MoE balance biases move by
``γ·sign`` of the step's expert load summed over micro-batches and ranks. Logging, evaluation
and atomic checkpoints (``state.py``) happen at their intervals; ``--resume`` reproduces an
uninterrupted run step for step.

Reuse notes. ``loss_fn`` returns the *mean* loss of its micro-batch; the step weights the
micro-batches (``micro_batch_weights``): equally for packed pretraining, by their target
tokens (over all ranks) when batches carry ``targets``, so SFT minimises the mean over the
step's target tokens.
``progress`` (0..1) lets the loss follow schedules (MTP λ). Metrics values may be tensors;
they are averaged like the loss and logged. A stage with its own outer loop (GRPO: rollouts,
then updates) calls ``train_step()``, ``evaluate()``, ``save()`` and ``finish()`` itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nanoseek.cpu_memory import keep_freed_memory
from nanoseek.distributed import (
    DistInfo,
    all_reduce_mean_,
    all_reduce_sum_,
    clip_grad_norm,
    decoder_layers,
    grad_sync,
    init_distributed,
    wrap_model,
)
from nanoseek.train import state as ckpt
from nanoseek.train.config import OptimConfig, RunConfig, to_dict
from nanoseek.train.losses import IGNORE_INDEX
from nanoseek.train.metrics import (
    RunLogger,
    load_stats,
    peak_flops,
    plot_expert_load,
    plot_losses,
    truncate_jsonl,
)
from nanoseek.train.optim import (
    BatchPlan,
    ExpertBalancer,
    build_optimizer,
    lr_at,
    piecewise,
    set_lr,
    validate_optim,
)

PRECISIONS = ("auto", "fp32", "bf16")
LossFn = Callable[[nn.Module, Any, float], tuple[torch.Tensor, dict[str, Any]]]
EvalFn = Callable[[nn.Module], dict[str, float]]


class BatchSource(Protocol):
    """Where micro-batches come from (e.g. ``nanoseek.data.loader.PackedLoader``)."""

    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the weights were not updated."""


@dataclass
class TrainState:
    """Loop counters saved in checkpoints."""

    step: int = 0
    tokens: int = 0


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` (autocast, fp32 master weights) on CUDA devices with bf16 and on
    CPUs with AMX tiles; ``fp32`` otherwise. CPUs with only AVX512-BF16 stay in fp32: there
    torch's bf16 GEMM measured about half the fp32 rate (``bench/train.py``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: unknown {precision!r}; use one of "
                         f"{', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return "bf16" if amx else "fp32"


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in the backward instead of storing them."""
    from torch.utils.checkpoint import checkpoint

    for layer in decoder_layers(model):
        layer.forward = functools.partial(checkpoint, layer.forward, use_reentrant=False)


def compile_model(model: nn.Module, per_layer: bool = False) -> None:
    """``torch.compile`` the model in place: the whole forward (embedding, layers, head, so
    norms, residual adds and activations fuse across layer boundaries), or each decoder layer
    (``per_layer``, the pattern FSDP2 wants). The routed experts' grouped matmul is the
    custom operator ``nanoseek::grouped_mm``, which the compiler calls as it is."""
    if not per_layer:
        model.compile()
        return
    for layer in decoder_layers(model):
        layer.compile()


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors of a dict / list / tuple batch, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def micro_batch_weights(batches: list[Any], world_size: int) -> list[float]:
    """Each micro-batch's weight in the step's gradient (``loss_fn`` returns its mean).

    Batches that carry ``targets`` (SFT, distillation) weigh by their target tokens over the
    step's total on every rank, times ``world_size`` (DDP and FSDP average the ranks'
    gradients): the step then minimises the mean over all its target tokens, not the mean of
    per-micro-batch means, which overweights micro-batches with few targets (HF Trainer's
    ``num_items_in_batch`` fix). Others (packed pretraining rows, all targets) weigh
    ``1 / accum`` each. The total is all-reduced: every rank calls this once per step.
    """
    accum = len(batches)
    if not all(isinstance(b, dict) and "targets" in b for b in batches):
        return [1.0 / accum] * accum
    counts = torch.stack([(b["targets"] != IGNORE_INDEX).sum() for b in batches]).double()
    total = all_reduce_sum_(counts.sum().clone())
    if total.item() == 0:
        return [1.0 / accum] * accum
    return (counts * world_size / total).tolist()


def check_out_dir(out_dir: Path, resuming: bool, rank: int = 0) -> None:
    """Fail early (on every rank alike) if ``out_dir`` cannot be written, or holds
    checkpoints a fresh run would mix with."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-rank{rank}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"train.out_dir: cannot write to {out_dir} ({e.strerror or e}); "
                         "choose a writable folder") from None
    if not resuming and ckpt.list_checkpoints(out_dir / "checkpoints"):
        raise ValueError(f"train.out_dir: {out_dir} already holds checkpoints; pass --resume "
                         "to continue that run, or choose a new out_dir")


class Trainer:
    """Owns the optimizer, schedules, distributed wrapping, checkpoints and logging."""

    def __init__(self, model: nn.Module, optim: OptimConfig, run: RunConfig, loss_fn: LossFn,
                 data: BatchSource, *, eval_fn: EvalFn | None = None, tokenizer: Any = None,
                 info: DistInfo | None = None, resume_from: Path | None = None,
                 flops_per_token: float = 0.0, stage: str = "train",
                 run_meta: dict[str, Any] | None = None) -> None:
        self.optim_cfg, self.run, self.loss_fn, self.data = optim, run, loss_fn, data
        self.eval_fn, self.tokenizer, self.stage = eval_fn, tokenizer, stage
        self.info = info or init_distributed(run.device)
        self.out_dir = Path(run.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        validate_optim(optim)
        self.precision = resolve_precision(run.precision, self.info.device)
        if self.info.device.type == "cpu":
            keep_freed_memory()  # large activations reuse pages instead of faulting them in
        self.plan = BatchPlan.create(run.micro_batch, run.seq_len, self.info.world_size,
                                     run.batch_tokens, run.batch_ramp_start,
                                     run.batch_ramp_tokens)
        self.total_steps, self.total_tokens = self.plan.total_steps(run.steps, run.tokens)
        check_out_dir(self.out_dir, resume_from is not None, self.info.rank)
        self.run_meta = {"stage": stage, "config": run_meta or {}, "optim": to_dict(optim),
                         "train": to_dict(run)}
        self.model = self._prepare_model(model, resume_from)
        self.optimizer = build_optimizer(self.model, optim)
        self.state = TrainState()
        if resume_from is not None:
            self._load(resume_from)
        elif self.info.is_main:
            ckpt.clean_partial(self.ckpt_root)
            for name in ("metrics.jsonl", "expert_load.jsonl"):
                (self.out_dir / name).unlink(missing_ok=True)
        self.flops_per_token = flops_per_token
        self.peak, self.peak_source = (0.0, "")
        if flops_per_token:
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
            self.peak, self.peak_source = peak_flops(self.info.device, dtype, run.peak_tflops)
        self.logger = RunLogger(self.out_dir, self.info.is_main, self.total_steps,
                                self.state.step, run.progress, run.tensorboard, run.log_every)

    # ------------------------------------------------------------------ setup
    def _prepare_model(self, model: nn.Module, resume_from: Path | None) -> nn.Module:
        if resume_from is not None:
            ckpt.load_model_weights(model, resume_from)
        model.to(self.info.device).train()
        self.balancer = ExpertBalancer(model)
        if self.run.activation_checkpointing:
            apply_activation_checkpointing(model)
        if self.run.compile:
            compile_model(model, per_layer=self.run.parallel == "fsdp")
        return wrap_model(model, self.run.parallel, self.info)

    def _load(self, path: Path) -> None:
        main, mine = ckpt.load_trainer_files(path, self.info)
        ckpt.load_optimizer_state(self.model, self.optimizer, main["optimizer"])
        self.state = TrainState(**main["loop"])
        self.data.load_state_dict(mine["data"])
        ckpt.set_rng_state(mine["rng"])
        if self.info.is_main:
            ckpt.clean_partial(self.ckpt_root)
            for name in ("metrics.jsonl", "expert_load.jsonl"):
                truncate_jsonl(self.out_dir / name, self.state.step)

    # ------------------------------------------------------------------ one step
    @property
    def progress(self) -> float:
        """Fraction of the run done (by steps)."""
        return self.state.step / max(self.total_steps, 1)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over this step's micro-batches; returns its log record."""
        t0 = time.perf_counter()
        accum = self.plan.accum_at(self.state.tokens)
        lr = lr_at(self.state.step, self.total_steps, self.optim_cfg)
        set_lr(self.optimizer, lr)
        sums: dict[str, torch.Tensor] = {}
        batches = [to_device(self.data.next_batch(), self.info.device) for _ in range(accum)]
        weights = micro_batch_weights(batches, self.info.world_size)
        for i, batch in enumerate(batches):
            with grad_sync(self.model, enabled=i == accum - 1):
                with self.balancer.recording(), self.autocast():
                    loss, metrics = self.loss_fn(self.model, batch, self.progress)
                (loss * weights[i]).backward()
            # the logged loss is the objective: accum * weight turns the plain average of
            # ``_reduce`` into the weighted one
            for key, value in {"loss": loss.detach() * weights[i] * accum, **metrics}.items():
                value = torch.as_tensor(value, dtype=torch.float32, device=self.info.device)
                sums[key] = sums.get(key, 0) + value.detach().float()
        rec = self._reduce(sums, accum)
        grad_norm = clip_grad_norm(self.model, self.optim_cfg.grad_clip)
        self._check_finite(rec["loss"], grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        gamma = piecewise(self.optim_cfg.bias_update_speed, self.progress,
                          "optim.bias_update_speed")
        loads = self.balancer.step(gamma)
        step_tokens = accum * self.plan.unit
        self.state.step += 1
        self.state.tokens += step_tokens
        dt = time.perf_counter() - t0
        rec.update(step=self.state.step, lr=lr, grad_norm=grad_norm, tokens=self.state.tokens,
                   batch_tokens=step_tokens, step_time_s=round(dt, 4),
                   tokens_per_s=step_tokens / dt)
        if self.peak:
            rec["mfu"] = step_tokens * self.flops_per_token / dt / (self.peak *
                                                                   self.info.world_size)
        if loads is not None:
            rec.update(load_stats(loads, self.balancer.layer_ids), bias_update_speed=gamma)
            self._loads = loads
        return rec

    def _reduce(self, sums: dict[str, torch.Tensor], accum: int) -> dict[str, float]:
        """Average the micro-batch metrics over micro-batches and ranks."""
        keys = sorted(sums)
        stacked = torch.stack([sums[k] for k in keys]) / accum
        all_reduce_mean_(stacked)
        return dict(zip(keys, stacked.tolist(), strict=True))

    def _check_finite(self, loss: float, grad_norm: float) -> None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        self.optimizer.zero_grad(set_to_none=True)
        last = ckpt.latest_checkpoint(self.ckpt_root)
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
        raise NonFiniteLossError(
            f"step {self.state.step + 1}: loss {loss}, gradient norm {grad_norm}: training "
            f"stopped before updating the weights; {where}. Lower optim.lr, check the data, "
            "then resume with --resume")

    # ------------------------------------------------------------------ the run
    def fit(self) -> TrainState:
        """Train to ``total_steps``, logging, evaluating and checkpointing on the way."""
        run, log = self.run, self.logger
        log.print(f"{self.stage}: {self.total_steps} steps, {self.total_tokens:,} tokens, "
                  f"{self.plan.batch_tokens:,} tokens/step, world {self.info.world_size}, "
                  f"precision {self.precision}, peak {self.peak / 1e12:.1f} TFLOP/s "
                  f"({self.peak_source or 'MFU off'}), resume at step {self.state.step}")
        try:
            while self.state.step < self.total_steps:
                rec = self.train_step()
                step = self.state.step
                if step % run.log_every == 0 or step == self.total_steps:
                    log.log(rec)
                    if getattr(self, "_loads", None) is not None:
                        log.log_expert_load(step, self._loads, self.balancer.layer_names)
                ckpt.maybe_fault("after_step", step)
                if run.eval_every and (step % run.eval_every == 0 or step == self.total_steps):
                    self.evaluate()
                if run.save_every and (step % run.save_every == 0 or step == self.total_steps):
                    self.save()
            self.export(self.out_dir / "model")
        finally:
            self.finish()
        return self.state

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` (every rank) and log its metrics at the current step."""
        if self.eval_fn is None:
            return {}
        self.model.eval()
        try:
            with self.autocast():
                metrics = self.eval_fn(self.model)
        finally:
            self.model.train()
        self.logger.log({"step": self.state.step, **metrics})
        return metrics

    def save(self) -> Path:
        """Write a checkpoint at the current step (every rank must call)."""
        return ckpt.save_checkpoint(
            self.ckpt_root, self.state.step, model=self.model, optimizer=self.optimizer,
            loop_state={"step": self.state.step, "tokens": self.state.tokens},
            data_state=self.data.state_dict(), info=self.info, keep_last=self.run.keep_last,
            tokenizer=self.tokenizer, meta=self.run_meta)

    def export(self, path: Path) -> None:
        """Write the current model (plus tokenizer) as an HF directory at ``path``."""
        ckpt.export_model(self.model, path, self.info, self.tokenizer)

    def finish(self) -> None:
        """Close the logger and draw the plots (main rank)."""
        self.logger.close()
        self.balancer.remove()
        if self.info.is_main:
            plot_losses(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
            plot_expert_load(self.out_dir / "expert_load.jsonl", self.out_dir / "expert_load.png")

