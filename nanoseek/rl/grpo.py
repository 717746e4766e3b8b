"""GRPO (DeepSeekMath §4.1, the RL of DeepSeek-R1): ``nanoseek grpo --config run.toml``.

Each step: sample ``G`` completions for each of ``prompts_per_step`` prompts with the rollout
engine (``rollout.py``), score them with the ``RewardSet``, turn rewards into group advantages
``(r - mean_group) / (std + eps)`` (``scale_rewards``: ``group`` std, ``batch`` std, or ``none``
as Dr. GRPO), then make ``mu`` optimizer updates over the batch in micro-batches with the
per-token loss

    -min(ρ·Â, clip(ρ, 1 - ε_low, 1 + ε_high)·Â) + β·k3,   ρ = π_θ / π_old,
    k3 = π_ref/π_θ - log(π_ref/π_θ) - 1    (β = 0: no reference model, no reference forward)

aggregated as ``grpo`` (mean over tokens per sequence, then over sequences), ``dapo`` (mean
over all tokens) or ``dr_grpo`` (sum over tokens / (sequences · max_new_tokens)). Every
normalizer counts the *global* batch, so splitting it into micro-batches or over data-parallel
ranks leaves the gradient unchanged. π_old is the policy's own log-prob at the first pass (so
ρ ≡ 1 there and only its gradient matters), the engine's log-probs are kept to log how far they
are from the trainer's (``logp_mismatch``) and, with ``rollout_is_cap`` C > 0, to correct
for it: the clipped term of each token is multiplied by the truncated importance weight
``min(π_old / π_sampler, C)`` (TIS; TRL's ``vllm_importance_sampling_correction``), which
matters where the sampler's distribution is not the trainer's (``top_p < 1``, a bf16 or
remote engine). ``dynamic_sampling`` drops groups whose rewards are
all equal (their advantage is 0; DAPO). A config::

    [model]
    path = "runs/sft/model"          # the starting policy (HF dir with its tokenizer)
    [data]
    tasks = ["countdown"]            # built-in tasks or JSONL task files
    difficulty = 3
    template = "plain"               # plain | r1_zero | chat
    [grpo]
    group_size = 16                  # G
    prompts_per_step = 32
    beta = 0.001                     # R1
    epsilon_low = 0.2                # R1 used 10; DAPO's clip-higher: 0.2 / 0.28
    epsilon_high = 0.28
    max_new_tokens = 256
    [reward]
    names = ["accuracy", "format"]
    [optim]
    lr = 3e-6                        # R1; tiny models need far more
    [train]
    out_dir = "runs/grpo"
    steps = 400
    eval_every = 50

Runs under ``torchrun`` (DDP or FSDP2 via ``train.parallel``) with the prompts split over
ranks. Logged each step (``metrics.jsonl``): ``reward`` and ``reward/<name>``, ``pass_rate``
(share with accuracy 1, or total reward >= 1 without an accuracy component), reward errors and
timeouts, ``frac_zero_std``, ``clip_frac``/``clip_low``/``clip_high``, ``kl`` (when β > 0),
``entropy``, ``length_mean``/``length_max``, ``truncated_frac``; held-out ``eval_greedy`` and
``eval_pass@1`` every ``train.eval_every`` steps (and at step 0); ``grpo.png`` (reward and
length curves) at the end. ``--resume`` continues the latest checkpoint exactly (prompts and
sampling seeds depend on the step only).

Here: config, the algebra and the stage's entry point; the step is in ``grpo_trainer.py``,
rollouts and batches in ``rollout.py``, the shared log-prob helper in ``logprobs.py``.
"""

from __future__ import annotations

import copy
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nanoseek.distributed import DistInfo
from nanoseek.rl.rollout import PromptPool
from nanoseek.train.cli import run_stage, stage_parser
from nanoseek.train.config import OptimConfig, RunConfig
from nanoseek.train.loop import TrainState

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
SCALES = ("group", "batch", "none")

log = logging.getLogger(__name__)


# ==================================================================== config
@dataclass
class ModelSection:
    """``[model]``: the starting policy and (optionally) another reference model."""

    path: str = ""
    ref_path: str = ""


@dataclass
class DataSection:
    """``[data]``: training tasks (built-in names or JSONL files), prompt template, eval set."""

    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    difficulty: int = 0
    """0: each built-in task's default."""
    num_problems: int = 5000
    """Training pool per built-in task (a task file gives all its lines)."""
    template: str = "plain"
    think_prefilled: bool | None = None
    eval_tasks: list[str] = field(default_factory=list)
    """Held-out tasks (default: ``tasks``, their test split)."""
    eval_problems: int = 200
    """Per eval task (a task file: its first lines)."""
    eval_samples: int = 1
    eval_temperature: float = 0.6


@dataclass
class GRPOSection:
    """``[grpo]``: sampling, advantages and the loss."""

    group_size: int = 8
    prompts_per_step: int = 16
    mu: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.001
    epsilon_low: float = 0.2
    epsilon_high: float = 0.28
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    adv_eps: float = 1e-4
    dynamic_sampling: bool = False
    mask_truncated: bool = False
    rollout_is_cap: float = 0.0
    """C of the truncated importance weight min(π_old / π_sampler, C); 0 turns it off."""
    max_model_len: int = 0
    """Engine context (prompt + completion); 0: the model's max_position_embeddings."""
    kv_cache_memory: int = 0
    """Engine KV-cache bytes; 0: the engine's default."""


@dataclass
class RewardSection:
    """``[reward]``: components of ``nanoseek.rl.rewards.REWARDS`` and their weights."""

    names: list[str] = field(default_factory=lambda: ["accuracy", "format"])
    weights: list[float] = field(default_factory=list)
    timeout_s: float = 5.0
    workers: int = 2
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GRPOConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    reward: RewardSection = field(default_factory=RewardSection)
    # RL defaults: R1's lr, constant, no weight decay, no balance-bias updates (the bias would
    # move the policy outside the gradient); ``train.micro_batch`` counts completions
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=3e-6, schedule="constant", weight_decay=0.0, bias_update_speed=0.0))
    train: RunConfig = field(default_factory=lambda: RunConfig(
        out_dir="runs/grpo", steps=100, micro_batch=8))


def validate(cfg: GRPOConfig) -> None:
    """Raise ``ValueError`` naming the field and the fix."""
    g, run = cfg.grpo, cfg.train
    if not cfg.model.path:
        raise ValueError("model.path: set the starting policy's HF model directory")
    if g.group_size < 2:
        raise ValueError(f"grpo.group_size: {g.group_size}; GRPO needs G >= 2 samples per prompt")
    for name in ("prompts_per_step", "mu", "max_new_tokens"):
        if getattr(g, name) < 1:
            raise ValueError(f"grpo.{name}: must be >= 1")
    if g.temperature <= 0 or not 0 < g.top_p <= 1:
        raise ValueError("grpo.temperature / grpo.top_p: need temperature > 0, 0 < top_p <= 1")
    if g.loss_type not in LOSS_TYPES:
        raise ValueError(f"grpo.loss_type: {g.loss_type!r}; use one of {', '.join(LOSS_TYPES)}")
    if g.scale_rewards not in SCALES:
        raise ValueError(f"grpo.scale_rewards: {g.scale_rewards!r}; use one of "
                         f"{', '.join(SCALES)}")
    if g.beta < 0 or g.epsilon_low < 0 or g.epsilon_high < 0 or g.adv_eps < 0:
        raise ValueError("grpo.beta / epsilon_low / epsilon_high / adv_eps: must be >= 0")
    if g.rollout_is_cap and g.rollout_is_cap < 1:
        raise ValueError(f"grpo.rollout_is_cap: {g.rollout_is_cap}; use 0 (off) or a cap >= 1 "
                         "(TRL uses 2-3)")
    if run.steps < 1 or run.tokens:
        raise ValueError("train.steps: set the number of GRPO steps (train.tokens is not used)")
    if run.batch_tokens:
        raise ValueError("train.batch_tokens: not used by grpo; the batch is "
                         "grpo.prompts_per_step × grpo.group_size completions")
    if cfg.reward.weights and len(cfg.reward.weights) != len(cfg.reward.names):
        raise ValueError(f"reward.weights: {len(cfg.reward.weights)} weights for "
                         f"{len(cfg.reward.names)} names; give one per name (or none)")


# ==================================================================== the algebra
def group_advantages(rewards_PG: torch.Tensor, scale: str = "group", eps: float = 1e-4,
                     batch_std: float | None = None) -> torch.Tensor:
    """Advantages ``[P, G]`` of rewards ``[P, G]`` (P prompts × G samples).

    ``r - mean_group``, divided by ``std + eps``: the group's (Bessel) std for ``group``, the
    std of the whole batch (``batch_std`` if given, e.g. over all ranks) for ``batch``; not
    divided for ``none`` (Dr. GRPO). A group whose rewards are all equal gets exactly 0.
    """
    # tied groups are set to 0 explicitly: the mean's rounding would leave ±1e-17 there,
    # which std + eps (eps = 0 allowed) could blow up to ±1 or 0/0
    tied_P1 = rewards_PG.amax(dim=1, keepdim=True) == rewards_PG.amin(dim=1, keepdim=True)
    centered = rewards_PG - rewards_PG.mean(dim=1, keepdim=True)
    if scale == "none":
        return centered.masked_fill(tied_P1, 0.0)
    if scale == "group":
        std = rewards_PG.std(dim=1, keepdim=True) if rewards_PG.shape[1] > 1 else 0.0
    elif scale == "batch":
        std = rewards_PG.flatten().std() if batch_std is None else batch_std
    else:
        raise ValueError(f"scale={scale!r}: use one of {', '.join(SCALES)}")
    return (centered / (std + eps)).masked_fill(tied_P1, 0.0)


def truncated_is_weight(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float
                        ) -> torch.Tensor:
    """Per-token ``min(exp(old_logp - sampler_logp), cap)`` (no gradient): how much more
    likely the trainer's π_old makes each sampled token than the sampler did, truncated."""
    return torch.exp(old_logp.detach() - sampler_logp).clamp(max=cap)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π_θ‖π_ref) per token: ``e^d - d - 1``, ``d = ref - logp``
    (always >= 0; unbiased for the KL when tokens come from π_θ)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def clipped_surrogate(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_B1: torch.Tensor,
                      eps_low: float, eps_high: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped loss per token ``-min(ρÂ, clip(ρ, 1-ε_low, 1+ε_high)Â)`` and the masks
    of tokens clipped low (ρ < 1-ε_low, Â < 0) and high (ρ > 1+ε_high, Â > 0), where the
    gradient is zero. The log-ratio is clamped to ±20 (verl) against overflow."""
    ratio = torch.exp((logp_BT - old_logp_BT).clamp(-20.0, 20.0))
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    loss = -torch.minimum(ratio * adv_B1, clipped * adv_B1)
    low = (ratio < 1.0 - eps_low) & (adv_B1 < 0)
    high = (ratio > 1.0 + eps_high) & (adv_B1 > 0)
    return loss, low, high


def aggregation_weights(mask_BT: torch.Tensor, loss_type: str, num_seqs: float,
                        num_tokens: float, max_len: int) -> torch.Tensor:
    """Per-token weights ``[B, T]`` such that ``Σ loss·w`` over the *global* batch is the
    ``grpo`` / ``dapo`` / ``dr_grpo`` aggregate (``num_seqs``, ``num_tokens``: global counts)."""
    if loss_type == "dapo":
        return mask_BT / max(num_tokens, 1.0)
    if loss_type == "grpo":
        return mask_BT / mask_BT.sum(1, keepdim=True).clamp(min=1.0) / max(num_seqs, 1.0)
    if loss_type == "dr_grpo":
        return mask_BT / (max(num_seqs, 1.0) * max_len)
    raise ValueError(f"loss_type={loss_type!r}: use one of {', '.join(LOSS_TYPES)}")


# ==================================================================== building the run
def load_policy(section: ModelSection) -> tuple[nn.Module, Any]:
    """The starting policy (float32) and its tokenizer, from ``model.path``. The MTP modules
    are frozen: GRPO trains the main next-token head only."""
    from nanoseek.checkpoint import load_pretrained
    from nanoseek.tokenizer import Tokenizer

    path = Path(section.path)
    if not (path / "config.json").is_file():
        raise ValueError(f"model.path: {path} is not a HF model directory (no config.json)")
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"model.path: {path} has no tokenizer.json; GRPO renders prompts and "
                         "scores text with the policy's own tokenizer, save it next to the model")
    tokenizer = Tokenizer.from_pretrained(path)
    model = load_pretrained(path, dtype=torch.float32)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"model.path: the tokenizer has {tokenizer.vocab_size} ids but the "
                         f"model only {model.config.vocab_size} embeddings")
    layers = getattr(model.model, "layers", [])
    for layer in list(layers)[model.config.num_hidden_layers :]:
        layer.requires_grad_(False)
    return model, tokenizer


def load_reference(cfg: GRPOConfig, policy: nn.Module, tokenizer: Any) -> nn.Module | None:
    """The frozen reference: None when β = 0 (never loaded, never run), else a copy of the
    starting policy or the model at ``model.ref_path`` (same tokenizer required)."""
    if cfg.grpo.beta == 0:
        return None
    if not cfg.model.ref_path:
        ref = copy.deepcopy(policy)
    else:
        from nanoseek.checkpoint import load_pretrained
        from nanoseek.tokenizer import Tokenizer

        path = Path(cfg.model.ref_path)
        if not (path / "tokenizer.json").is_file():
            raise ValueError(f"model.ref_path: {path} has no tokenizer.json to check against "
                             "the policy's; the token-level KL needs the same tokenizer")
        if Tokenizer.from_pretrained(path).fingerprint() != tokenizer.fingerprint():
            raise ValueError(f"model.ref_path: {path} has a different tokenizer from "
                             f"model.path {cfg.model.path}; the per-token KL compares the same "
                             "token ids, so use a reference trained with the policy's tokenizer")
        ref = load_pretrained(path, dtype=torch.float32)
        if ref.config.vocab_size != policy.config.vocab_size:
            raise ValueError(f"model.ref_path: vocab_size {ref.config.vocab_size} differs from "
                             f"the policy's {policy.config.vocab_size}")
    return ref.requires_grad_(False).eval()


def build_problems(d: DataSection, tasks: Sequence[str], split: str, num: int, seed: int,
                   tokenizer: Any, limit: int, cap_files: bool = False
                   ) -> tuple[list[Any], list[list[int]], int]:
    """``num`` problems of each built-in task (and every line of each task file, or its first
    ``num`` with ``cap_files``) with their prompt ids; prompts that do not fit ``limit``
    tokens are left out. Returns ``(problems, prompts, skipped)``."""
    from nanoseek.data.tasks import TASKS
    from nanoseek.eval.run import build_prompts, fits_context, load_problems

    problems = []
    for task in tasks:
        problems += load_problems(task, num if task in TASKS or cap_files else None, seed, split,
                                  d.difficulty or None)
    prompts = build_prompts(problems, d.template, tokenizer, d.think_prefilled)
    keep = [i for i, p in enumerate(prompts) if fits_context(p, limit)]
    return [problems[i] for i in keep], [prompts[i] for i in keep], len(problems) - len(keep)


def solutions_too_long(problems: Sequence[Any], tokenizer: Any, max_new_tokens: int,
                       d: DataSection) -> tuple[int, int]:
    """``(count, longest)``: how many reference solutions of ``problems`` (as completions,
    plus the end-of-sequence token) need more than ``max_new_tokens`` tokens, and the longest
    in tokens (0 when no problem has a solution). A rollout that long is cut off and scores 0,
    so GRPO would teach the policy to avoid the very answers its data calls right."""
    from nanoseek.data.tasks import solution_completion
    from nanoseek.eval.run import resolve_think

    think = resolve_think(d.template, d.think_prefilled)
    texts = [solution_completion(p, think) for p in problems if p.solution is not None]
    if not texts:
        return 0, 0
    lengths = [len(ids) + 1 for ids in tokenizer.encode_batch(texts)]
    return sum(n > max_new_tokens for n in lengths), max(lengths)


def make_rewards(cfg: GRPOConfig) -> Any:
    """The ``RewardSet`` of ``[reward]`` (``format`` told whether the prompt opened <think>)."""
    from nanoseek.eval.run import resolve_think
    from nanoseek.rl.rewards import RewardSet

    r, d = cfg.reward, cfg.data
    options = dict(r.options)
    if "format" in r.names and "format" not in options:
        options["format"] = {"think_prefilled": resolve_think(d.template, d.think_prefilled)}
    return RewardSet(r.names, r.weights or None, r.timeout_s, options, r.workers)


def build_trainer(cfg: GRPOConfig, info: DistInfo, resume: str | None = None,
                  rewards: Any = None) -> Any:
    """Check every input, then build policy, reference, prompts, rewards (``rewards``: an
    object with ``RewardSet``'s ``score``/``close`` to use instead of ``[reward]``'s) and the
    ``GRPOTrainer``. Nothing is written before the checks pass."""
    from nanoseek.rl.grpo_trainer import GRPOTrainer
    from nanoseek.train.pretrain import resolve_resume

    validate(cfg)
    if cfg.grpo.prompts_per_step < info.world_size:
        raise ValueError(f"grpo.prompts_per_step: {cfg.grpo.prompts_per_step} prompts cannot "
                         f"be split over {info.world_size} ranks; use at least one per rank")
    d, run = cfg.data, cfg.train
    resume_from = resolve_resume(resume, Path(run.out_dir))
    torch.manual_seed(run.seed)
    policy, tokenizer = load_policy(cfg.model)
    ref = load_reference(cfg, policy, tokenizer)
    limit = min(policy.config.max_position_embeddings, cfg.grpo.max_model_len or 2**62)
    problems, prompts, skipped = build_problems(d, d.tasks, "train", d.num_problems, run.seed,
                                                tokenizer, limit)
    if not problems:
        raise ValueError(f"data.tasks: all {skipped} prompts are longer than the context "
                         f"({limit} tokens); shorten them or raise grpo.max_model_len")
    evals: list[Any] = []
    if run.eval_every:
        evals = build_problems(d, d.eval_tasks or d.tasks, "test", d.eval_problems, run.seed,
                               tokenizer, limit, cap_files=True)[0]
    pool = PromptPool(problems, prompts, cfg.grpo.prompts_per_step, run.seed, info.rank,
                      info.world_size)
    trainer = GRPOTrainer(policy, cfg, pool, rewards or make_rewards(cfg), tokenizer, info,
                          ref_model=ref, eval_problems=evals, resume_from=resume_from)
    trainer.skipped_too_long = skipped
    trainer.solutions_too_long = solutions_too_long(problems, tokenizer, cfg.grpo.max_new_tokens,
                                                    d)
    return trainer


def run_grpo(cfg: GRPOConfig, info: DistInfo, resume: str | None = None) -> TrainState:
    """Build the trainer, log the prompt counts and the step-0 evaluation, and train."""
    trainer = build_trainer(cfg, info, resume)
    too_long, longest = trainer.solutions_too_long
    if too_long and trainer.info.is_main:
        log.warning("grpo.max_new_tokens=%d is shorter than %d of the %d reference solutions "
                    "(longest %d tokens): their rollouts are cut off and score 0, so GRPO learns "
                    "to avoid them; raise it to at least %d", cfg.grpo.max_new_tokens, too_long,
                    len(trainer.data.problems), longest, longest)
    if trainer.state.step == 0:
        trainer.logger.log({"step": 0, "train_prompts": len(trainer.data.problems),
                            "skipped_too_long": trainer.skipped_too_long,
                            "solutions_too_long": too_long, "longest_solution": longest,
                            "eval_prompts": len(trainer.eval_problems)})
        if trainer.eval_fn is not None:
            trainer.evaluate()
    return trainer.fit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanoseek grpo``; returns the exit code."""
    parser = stage_parser("nanoseek grpo", "GRPO reinforcement learning with rule rewards.",
                          "model, data, grpo, reward, optim, train", "--grpo.beta 0")
    return run_stage(parser, GRPOConfig, run_grpo, argv)


if __name__ == "__main__":
    sys.exit(main())
