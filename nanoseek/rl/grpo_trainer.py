"""The GRPO training step on the shared ``Trainer``: the micro-batch loss, the rollout → update
cycle, distributed bookkeeping, evaluation and the reward/length plot.

``GRPOTrainer`` reuses everything of ``nanoseek.train.loop.Trainer`` (optimizer and parameter
groups, learning-rate schedule, DDP/FSDP2 wrapping, bf16 autocast, atomic checkpoints and exact
resume, logging, evaluation cadence, export) and replaces only ``train_step``: one rollout
(``rollout``), then ``mu`` optimizer updates over the same batch (``update``). Its ``data`` is
the ``PromptPool``, so a checkpoint stores the prompt cursor with the RNG states.

Data parallelism: every rank samples its share of the prompts; reward statistics and the loss
normalizers (sequences, tokens) are summed over ranks before use, and ranks that hold fewer
micro-batches run zero-weight dummies so collective calls stay matched.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from nanoseek.distributed import DistInfo, all_reduce_sum_, clip_grad_norm, grad_sync, unwrap
from nanoseek.rl.grpo import (
    GRPOConfig,
    aggregation_weights,
    clipped_surrogate,
    group_advantages,
    k3_kl,
    truncated_is_weight,
)
from nanoseek.rl.logprobs import sequence_logprobs
from nanoseek.rl.rollout import (
    LocalRolloutEngine,
    PromptPool,
    RolloutEngine,
    collate,
    to_rollouts,
)
from nanoseek.train.config import to_dict
from nanoseek.train.loop import Trainer, to_device
from nanoseek.train.metrics import load_stats, read_jsonl
from nanoseek.train.optim import lr_at, piecewise, set_lr


@dataclass
class GRPOLoss:
    """The micro-batch ``loss_fn(model, micro, progress) -> (loss, sums)``.

    ``micro``: ``input_ids [b, T]``, ``mask``/``weight``/``rollout_logp``/``ref_logp``
    ``[b, T-1]``, ``adv [b]`` and ``old_logp`` (None until the first pass fills it in).
    The loss is ``world_size · Σ loss·weight`` so that averaging gradients over ranks (DDP,
    FSDP) gives the gradient of the global sum. ``sums`` are detached counts and sums for
    logging (KL, entropy and engine mismatch on the first pass only).
    """

    temperature: float = 1.0
    eps_low: float = 0.2
    eps_high: float = 0.28
    beta: float = 0.0
    world_size: int = 1
    rollout_is_cap: float = 0.0  # > 0: truncated importance weights (``truncated_is_weight``)

    def __call__(self, model: nn.Module, micro: dict[str, Any], progress: float = 0.0
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        first = micro["old_logp"] is None
        logp, entropy = sequence_logprobs(model, micro["input_ids"], self.temperature,
                                          with_entropy=first)
        if first:
            micro["old_logp"] = logp.detach()
        mask = micro["mask"]
        per_token, low, high = clipped_surrogate(logp, micro["old_logp"], micro["adv"][:, None],
                                                 self.eps_low, self.eps_high)
        sums = {"tokens": mask.sum(), "clip_low": (low * mask).sum(),
                "clip_high": (high * mask).sum()}
        if self.rollout_is_cap > 0:  # on the policy term only, as TRL
            is_weight = truncated_is_weight(micro["old_logp"], micro["rollout_logp"],
                                            self.rollout_is_cap)
            per_token = per_token * is_weight
            if first:
                sums["is_weight"] = (is_weight * mask).sum()
                sums["is_truncated"] = ((is_weight >= self.rollout_is_cap) * mask).sum()
        if self.beta > 0:
            kl = k3_kl(logp, micro["ref_logp"])
            per_token = per_token + self.beta * kl
            if first:
                sums["kl"] = (kl.detach() * mask).sum()
        if first:
            sums["first_tokens"] = mask.sum()
            sums["entropy"] = (entropy * mask).sum()
            sums["mismatch"] = ((logp.detach() - micro["rollout_logp"]).abs() * mask).sum()
        local = (per_token * micro["weight"]).sum()
        sums["loss"] = local.detach()
        return local * self.world_size, sums


# ==================================================================== batches
def micro_batches(tensors: dict[str, torch.Tensor], row_lens: list[int], size: int,
                  count: int, pad_id: int) -> list[dict[str, Any]]:
    """Exactly ``count`` micro-batches of at most ``size`` rows, each cut to its longest row;
    missing ones (a rank with fewer rows than another) are zero-weight dummies, so every rank
    runs the same number of forwards and backwards."""
    out = []
    for start in range(0, count * size, size):
        idx = list(range(start, min(start + size, len(row_lens))))
        if idx:
            width = max(row_lens[i] for i in idx)
            micro = {k: v[idx][:, : width - (k != "input_ids")] if v.dim() == 2 else v[idx]
                     for k, v in tensors.items()}
        else:
            micro = {"input_ids": torch.full((1, 2), pad_id, dtype=torch.long),
                     "adv": torch.zeros(1)}
            micro.update({k: torch.zeros(1, 1) for k in tensors if k not in micro})
        out.append({**micro, "old_logp": None})
    return out


def _all_reduce_max_(x: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


# ==================================================================== the trainer
class GRPOTrainer(Trainer):
    """The shared ``Trainer`` (optimizer, schedules, wrapping, checkpoints, logging) with a
    GRPO step: one rollout, then ``mu`` optimizer updates. ``data`` is the ``PromptPool``.

    ``engine_factory(policy, tokenizer) -> RolloutEngine`` plugs in another rollout engine
    (it gets the wrapped policy); the default is ``LocalRolloutEngine``."""

    def __init__(self, model: nn.Module, cfg: GRPOConfig, pool: PromptPool, rewards: Any,
                 tokenizer: Any, info: DistInfo, *, ref_model: nn.Module | None = None,
                 eval_problems: Sequence[Any] = (), resume_from: Path | None = None,
                 engine_factory: Callable[[nn.Module, Any], RolloutEngine] | None = None
                 ) -> None:
        g = cfg.grpo
        loss = GRPOLoss(g.temperature, g.epsilon_low, g.epsilon_high, g.beta, info.world_size,
                        g.rollout_is_cap)
        super().__init__(model, cfg.optim, cfg.train, loss, pool, tokenizer=tokenizer,
                         info=info, resume_from=resume_from, stage="grpo", run_meta=to_dict(cfg))
        self.cfg, self.rewards, self.eval_problems = cfg, rewards, list(eval_problems)
        self.ref_model = ref_model.to(info.device) if ref_model is not None else None
        kwargs = {"max_model_len": g.max_model_len or None}
        if g.kv_cache_memory:
            kwargs["kv_cache_memory"] = g.kv_cache_memory
        self.engine = (engine_factory or partial(LocalRolloutEngine, **kwargs))(self.model,
                                                                                 tokenizer)
        self.eos_ids = list(unwrap(self.model).config.eos_token_ids)
        if tokenizer.eos_id is not None and tokenizer.eos_id not in self.eos_ids:
            self.eos_ids.append(tokenizer.eos_id)
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else self.eos_ids[0]
        if self.eval_problems and cfg.train.eval_every:
            self.eval_fn = self.evaluate_policy

    # ---------------------------------------------------------------- one step
    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        lr = lr_at(self.state.step, self.total_steps, self.optim_cfg)
        set_lr(self.optimizer, lr)
        micros, rec = self.rollout()
        t1 = time.perf_counter()
        rec.update(self.update(micros))
        self.state.step += 1
        self.state.tokens += int(rec["tokens"])
        dt = time.perf_counter() - t0
        rec.update(step=self.state.step, lr=lr, rollout_s=round(t1 - t0, 4),
                   step_time_s=round(dt, 4), tokens_per_s=rec["tokens"] / dt)
        if self.state.step % self.run.log_every == 0:
            self.logger.print(summary_line(rec))
        return rec

    @torch.no_grad()
    def rollout(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Sample, score, compute advantages and reference log-probs: this rank's
        micro-batches and the step's (global) rollout metrics."""
        from nanoseek.infer import SamplingParams

        g, n = self.cfg.grpo, self.cfg.grpo.group_size
        problems, prompts, slots = self.data.next_batch()
        params = [SamplingParams(n=n, temperature=g.temperature, top_p=g.top_p,
                                 max_tokens=g.max_new_tokens, logprobs=0,
                                 seed=(self.run.seed * 1_000_003 + s * n) % 2**62) for s in slots]
        self.engine.load_weights(self.model)
        groups = to_rollouts(prompts, self.engine.generate(prompts, params)) if prompts else []
        flat = [r for group in groups for r in group]
        scored = self.rewards.score([r.text for r in flat],
                                    [p for p in problems for _ in range(n)],
                                    [len(r.token_ids) for r in flat])
        rewards_PG = torch.as_tensor(scored.total, dtype=torch.float64).view(len(groups), n)
        rec, batch_std = self._reward_metrics(scored, rewards_PG, flat)
        adv_PG = group_advantages(rewards_PG, g.scale_rewards, g.adv_eps, batch_std)
        keep = rewards_PG.amax(1) > rewards_PG.amin(1) if g.dynamic_sampling else \
            torch.ones(len(groups), dtype=torch.bool)
        rows = [r for p, group in enumerate(groups) if keep[p] for r in group]
        adv = adv_PG[keep].flatten().float()
        return self._micro_batches(rows, adv, rec), rec

    def _reward_metrics(self, scored: Any, rewards_PG: torch.Tensor, flat: list
                        ) -> tuple[dict[str, Any], float]:
        names = list(scored.components)
        comps = [float(scored.components[k].sum()) for k in names]
        passed = scored.components.get("accuracy", scored.total)
        zero_std = float((rewards_PG.amax(1) == rewards_PG.amin(1)).sum()) if flat else 0.0
        lengths = [len(r.token_ids) for r in flat]
        sums = torch.tensor([len(flat), float(scored.total.sum()),
                             float((scored.total ** 2).sum()), float((passed >= 1).sum()),
                             zero_std, rewards_PG.shape[0], sum(lengths),
                             sum(r.finish_reason == "length" for r in flat),
                             *comps, *scored.errors.values(), *scored.timeouts.values()],
                            dtype=torch.float64)
        all_reduce_sum_(sums)
        length_max = _all_reduce_max_(torch.tensor(float(max(lengths, default=0))))
        k = len(names)
        count, total, total_sq, passes, zero, groups, length, trunc = sums[:8].tolist()
        count = max(count, 1.0)
        var = max(total_sq - total**2 / count, 0.0) / max(count - 1.0, 1.0)
        rec: dict[str, Any] = {
            "reward": total / count, "reward_std": math.sqrt(var), "pass_rate": passes / count,
            "frac_zero_std": zero / max(groups, 1.0), "length_mean": length / count,
            "length_max": float(length_max), "truncated_frac": trunc / count}
        for i, name in enumerate(names):
            rec[f"reward/{name}"] = float(sums[8 + i]) / count
            rec[f"reward_errors/{name}"] = int(sums[8 + k + i])
            rec[f"reward_timeouts/{name}"] = int(sums[8 + 2 * k + i])
        return rec, math.sqrt(var)

    def _micro_batches(self, rows: list, adv: torch.Tensor, rec: dict[str, Any]
                       ) -> list[dict[str, Any]]:
        g = self.cfg.grpo
        counts = torch.tensor([float(len(rows)), 0.0], dtype=torch.float64)
        batch = None
        if rows:
            batch = collate(rows, self.pad_id, self.eos_ids, g.mask_truncated)
            counts[1] = float(batch.mask.sum())
        all_reduce_sum_(counts)
        num_seqs, num_tokens = counts.tolist()
        size = self.run.micro_batch
        n_micro = _all_reduce_max_(torch.tensor(float(math.ceil(len(rows) / size))))
        rec.update(groups_kept=num_seqs / g.group_size, update_tokens=num_tokens,
                   tokens=num_tokens)
        if num_seqs == 0:
            return []
        tensors: dict[str, torch.Tensor] = {}
        lens: list[int] = []
        if batch is not None:
            weight = aggregation_weights(batch.mask, g.loss_type, num_seqs, num_tokens,
                                         g.max_new_tokens)
            tensors = {"input_ids": batch.input_ids, "mask": batch.mask, "weight": weight,
                       "rollout_logp": batch.rollout_logp, "adv": adv}
            lens = [len(r.prompt_ids) + n for r, n in zip(rows, batch.lengths, strict=True)]
        else:
            tensors = {k: torch.zeros(0, 1) for k in ("mask", "weight", "rollout_logp")}
        micros = [to_device(m, self.info.device) for m in
                  micro_batches(tensors, lens, size, int(n_micro), self.pad_id)]
        for m in micros:
            m["ref_logp"] = None
            if self.ref_model is not None:
                with self.autocast():
                    m["ref_logp"] = sequence_logprobs(self.ref_model, m["input_ids"],
                                                      g.temperature)[0]
        return micros

    def update(self, micros: list[dict[str, Any]]) -> dict[str, Any]:
        """``mu`` optimizer steps over the micro-batches; the step's loss-side metrics."""
        if not micros:
            return {"loss": 0.0, "grad_norm": 0.0, "skipped_update": 1}
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        grad_norm, losses = 0.0, []
        for _ in range(self.cfg.grpo.mu):
            loss_sum = torch.zeros((), device=self.info.device)
            for i, micro in enumerate(micros):
                with grad_sync(self.model, enabled=i == len(micros) - 1):
                    with self.balancer.recording(), self.autocast():
                        loss, parts = self.loss_fn(self.model, micro, self.progress)
                    loss.backward()
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0) + value.float()
                loss_sum += parts["loss"].float()
            losses.append(float(all_reduce_sum_(loss_sum)))
            grad_norm = clip_grad_norm(self.model, self.optim_cfg.grad_clip)
            self._check_finite(losses[-1], grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            gamma = piecewise(self.optim_cfg.bias_update_speed, self.progress,
                              "optim.bias_update_speed")
            loads = self.balancer.step(gamma)
            if loads is not None:
                self._loads = loads
        keys = sorted(sums)
        totals = dict(zip(keys, all_reduce_sum_(torch.stack([sums[k] for k in keys])).tolist(),
                          strict=True))
        first, every = max(totals["first_tokens"], 1.0), max(totals["tokens"], 1.0)
        rec = {"loss": sum(losses) / len(losses), "grad_norm": grad_norm,
               "clip_low": totals["clip_low"] / every, "clip_high": totals["clip_high"] / every,
               "clip_frac": (totals["clip_low"] + totals["clip_high"]) / every,
               "entropy": totals["entropy"] / first, "logp_mismatch": totals["mismatch"] / first}
        if "kl" in totals:
            rec["kl"] = totals["kl"] / first
        if "is_weight" in totals:
            rec["is_weight"] = totals["is_weight"] / first
            rec["is_truncated"] = totals["is_truncated"] / first
        if getattr(self, "_loads", None) is not None:
            rec.update(load_stats(self._loads, self.balancer.layer_ids))
        return rec

    # ---------------------------------------------------------------- evaluation, plots
    def evaluate_policy(self, model: nn.Module) -> dict[str, float]:
        """Held-out accuracy with the rollout engine (each rank a share of the problems)."""
        from nanoseek.eval.run import evaluate

        d = self.cfg.data
        self.engine.load_weights(self.model)
        mine = self.eval_problems[self.info.rank :: self.info.world_size]
        sums = torch.zeros(4, dtype=torch.float64)
        if mine:
            m = evaluate(self.engine, mine, d.eval_samples, max_tokens=self.cfg.grpo.max_new_tokens,
                         temperature=d.eval_temperature, top_p=1.0, seed=self.run.seed,
                         template=d.template, think_prefilled=d.think_prefilled,
                         reward_workers=self.cfg.reward.workers,
                         reward_timeout_s=self.cfg.reward.timeout_s).metrics
            n = m["num_problems"]
            sums += torch.tensor([n, n * (m["greedy"] or 0), n * (m["pass@1"] or 0),
                                  n * (m["mean_response_tokens"] or 0)], dtype=torch.float64)
        all_reduce_sum_(sums)
        n = max(float(sums[0]), 1.0)
        return {"eval_greedy": float(sums[1]) / n, "eval_pass@1": float(sums[2]) / n,
                "eval_length": float(sums[3]) / n, "eval_problems": int(sums[0])}

    def finish(self) -> None:
        super().finish()
        if self.info.is_main:
            plot_grpo(self.out_dir / "metrics.jsonl", self.out_dir / "grpo.png")
        self.rewards.close()


def summary_line(rec: dict[str, Any]) -> str:
    """The console line of one GRPO step."""
    parts = [f"grpo step {rec['step']}", f"reward {rec['reward']:.3f}",
             f"pass {rec['pass_rate']:.3f}", f"zero-std {rec['frac_zero_std']:.2f}",
             f"len {rec['length_mean']:.1f}/{rec['length_max']:.0f}"]
    for key in ("kl", "clip_frac", "entropy"):
        if key in rec:
            parts.append(f"{key} {rec[key]:.4f}")
    return " | ".join(parts)


def plot_grpo(metrics_path: Path, png: Path) -> Path | None:
    """Reward (total and per component), held-out accuracy, and response length (mean, max)
    against the GRPO step: the R1 "aha" curves."""
    records = read_jsonl(metrics_path)
    train = [r for r in records if "reward" in r]
    evals = [r for r in records if "eval_greedy" in r]
    if not train:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6.5))
    FigureCanvasAgg(fig)
    ax_r, ax_len = fig.subplots(2, 1, sharex=True)
    steps = [r["step"] for r in train]
    ax_r.plot(steps, [r["reward"] for r in train], label="reward (total)", lw=1.2)
    for key in sorted(k for k in train[0] if k.startswith("reward/")):
        ax_r.plot(steps, [r.get(key, math.nan) for r in train], label=key, lw=0.8, alpha=0.8)
    if evals:
        ax_r.plot([r["step"] for r in evals], [r["eval_greedy"] for r in evals], "o-",
                  label="held-out greedy accuracy")
    ax_r.set_ylabel("reward / accuracy")
    ax_r.legend(fontsize=8)
    ax_r.grid(alpha=0.3)
    ax_len.plot(steps, [r["length_mean"] for r in train], label="mean")
    ax_len.plot(steps, [r["length_max"] for r in train], label="max", alpha=0.6)
    ax_len.set_ylabel("response tokens")
    ax_len.set_xlabel("GRPO step")
    ax_len.legend(fontsize=8)
    ax_len.grid(alpha=0.3)
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)
    return png
