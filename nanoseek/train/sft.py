"""Supervised fine-tuning on chat JSONL: ``nanoseek sft --config sft.toml``.

Used for R1's cold start, for rejection-sampled data and to train distilled students. The
loss is next-token cross-entropy on assistant tokens only (``Tokenizer.render_chat``'s mask),
over rows packed with several conversations that cannot see each other (``sft_data``).
Optionally it adds logit KD against stored teacher top-k log-probs
(``loss = (1 − w)·CE + w·KD``, ``nanoseek.distill.kd``). A config file::

    [model]
    path = "runs/pretrain/model"   # an HF dir (or preset = "tiny-qwen2" for fresh weights)

    [data]
    train = "data/sft/arithmetic.jsonl"   # or a list of files; lines {"messages": [...]}
    val = ""                    # a held-out file, or:
    val_fraction = 0.05         # hold out this share of the conversations (by hash)
    tokenizer = ""              # default: the model dir's
    overlong = "drop"           # or "truncate": conversations longer than seq_len + 1
    topk = ""                   # teacher top-k file for logit KD (nanoseek distill)

    [sft]
    epochs = 2.0                # used when train.steps and train.tokens are 0
    kd_weight = 0.0             # w; kd_loss = "forward_kl" | "reverse_kl" | "jsd", kd_beta

    [train]
    out_dir = "runs/sft"
    seq_len = 1024              # row length; rows are packed with whole conversations
    micro_batch = 4
    eval_every = 50             # validation loss (needs val or val_fraction)

    [optim]
    lr = 5e-5                   # R1: 5e-5 → 5e-6 cosine
    schedule = "cosine"

Overrides, resume and multi-process runs work as in ``nanoseek pretrain``. In Python:
``run_sft(cfg) -> SFTResult`` (the model is at ``result.model_dir``).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.distributed import DistInfo, all_reduce_sum_, init_distributed
from nanoseek.train.cli import run_stage, stage_parser
from nanoseek.train.config import OptimConfig, RunConfig, to_dict
from nanoseek.train.loop import Trainer, TrainState, to_device
from nanoseek.train.losses import IGNORE_INDEX, cross_entropy
from nanoseek.train.optim import BatchPlan
from nanoseek.train.pretrain import ModelSection, build_or_load, model_config, resolve_resume
from nanoseek.train.sft_data import (
    PackedSFTLoader,
    Sample,
    encode_records,
    iter_eval_batches,
    packed_attention_mask,
    read_chat_jsonl,
    split_records,
)

log = logging.getLogger(__name__)


@dataclass
class SFTDataSection:
    """``[data]``: chat JSONL files, the validation split and how conversations are rendered."""

    train: str | list[str] = ""
    val: str = ""
    val_fraction: float = 0.0
    tokenizer: str = ""
    topk: str = ""
    overlong: str = "drop"
    thinking: bool = True
    last_turn_only: bool = False
    shuffle: bool = True
    pack_window: int = 64


@dataclass
class SFTSection:
    """``[sft]``: epochs (when no step/token budget is set) and the logit-KD mix."""

    epochs: float = 1.0
    kd_weight: float = 0.0
    kd_loss: str = "forward_kl"
    kd_beta: float = 0.5


@dataclass
class SFTConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(init_std=0.02))
    data: SFTDataSection = field(default_factory=SFTDataSection)
    sft: SFTSection = field(default_factory=SFTSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=5e-5, schedule="cosine", weight_decay=0.0))
    train: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/sft"))


@dataclass
class SFTResult:
    """Where the fine-tuned model is, the loop counters and the data statistics."""

    model_dir: Path
    state: TrainState
    data: dict[str, Any]


# -------------------------------------------------------------------- the loss
@dataclass
class SFTLoss:
    """The SFT ``loss_fn``: ``(1 − w)·CE + w·KD`` over a packed batch (``make_batch``'s dict).

    CE is the mean over the batch's trainable targets; KD the mean ``topk_kd_loss`` over the
    positions with teacher log-probs (``w`` applies only to batches that carry them)."""

    kd_weight: float = 0.0
    kd_loss: str = "forward_kl"
    kd_beta: float = 0.5

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor], progress: float
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = forward_packed(model, batch)
        n = (batch["targets"] != IGNORE_INDEX).sum()
        ce = cross_entropy(logits, batch["targets"]) if n > 0 else logits.sum() * 0.0
        metrics = {"ce_loss": ce.detach(), "target_tokens": n.float()}
        w = self.kd_weight if "kd_mask" in batch else 0.0
        if w == 0.0:
            return ce, metrics
        kd = self.kd_term(logits, batch)
        metrics["kd_loss"] = kd.detach()
        return (kd if w == 1.0 else (1.0 - w) * ce + w * kd), metrics

    def kd_term(self, logits_BTV: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean KD loss over ``batch["kd_mask"]`` (0 with a gradient path if it is empty)."""
        from nanoseek.distill.kd import topk_kd_loss

        m = batch["kd_mask"]
        if not m.any():
            return logits_BTV.sum() * 0.0
        per = topk_kd_loss(logits_BTV[m], batch["kd_ids"][m], batch["kd_logprobs"][m],
                           self.kd_loss, self.kd_beta)
        return per.mean()


def forward_packed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[B, T, V]`` of a packed batch: block-diagonal attention, per-sample positions."""
    mask = packed_attention_mask(batch["segment_ids"])
    return model(batch["input_ids"], position_ids=batch["position_ids"], attn_mask=mask).logits


def make_val_fn(samples: Sequence[Sample], run: RunConfig, pad_id: int, info: DistInfo,
                loss: SFTLoss, window: int):
    """``val_fn(model) -> {"val_loss"[, "val_kd"]}``: token-mean CE (and KD) over the held-out
    conversations (the first ``run.eval_batches`` batches over all ranks; 0: all)."""
    per_rank = math.ceil(run.eval_batches / info.world_size)

    def val_fn(model: nn.Module) -> dict[str, float]:
        sums = torch.zeros(4, dtype=torch.float64, device=info.device)
        batches = iter_eval_batches(samples, run.seq_len, run.micro_batch, pad_id, info.rank,
                                    info.world_size, window)
        for i, batch in enumerate(batches):
            if per_rank and i >= per_rank:
                break
            batch = to_device(batch, info.device)
            logits = forward_packed(model, batch)
            nll = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                  ignore_index=IGNORE_INDEX, reduction="sum")
            n = (batch["targets"] != IGNORE_INDEX).sum()
            kd, kd_n = torch.zeros(()), torch.zeros(())
            if "kd_mask" in batch and batch["kd_mask"].any():
                kd_n = batch["kd_mask"].sum()
                kd = loss.kd_term(logits, batch) * kd_n
            sums += torch.stack([nll.double(), n.double(), kd.double().to(sums.device),
                                 kd_n.double().to(sums.device)])
        all_reduce_sum_(sums)
        out = {"val_loss": (sums[0] / sums[1].clamp(min=1)).item()}
        if sums[3] > 0:
            out["val_kd"] = (sums[2] / sums[3]).item()
        return out

    return val_fn


# -------------------------------------------------------------------- building blocks
def load_sft_tokenizer(cfg: SFTConfig):
    """``data.tokenizer``, else the tokenizer saved in ``model.path``."""
    from nanoseek.tokenizer import Tokenizer

    if cfg.data.tokenizer:
        return Tokenizer.from_pretrained(cfg.data.tokenizer)
    if cfg.model.path and (Path(cfg.model.path) / "tokenizer.json").is_file():
        return Tokenizer.from_pretrained(cfg.model.path)
    raise ValueError("data.tokenizer: no tokenizer (model.path has no tokenizer.json); set "
                     "[data] tokenizer = \"DIR\"")


def load_samples(cfg: SFTConfig, tokenizer: Any) -> tuple[list[Sample], list[Sample],
                                                          dict[str, Any]]:
    """Train and validation samples plus statistics; attaches teacher top-k for logit KD."""
    data, max_len = cfg.data, cfg.train.seq_len + 1
    if not data.train:
        raise ValueError("data.train: no SFT data; set it to a chat JSONL file (or a list)")
    records = read_chat_jsonl(data.train)
    if data.val:  # a held-out file replaces the hash split
        train_recs, val_recs = records, read_chat_jsonl(data.val)
    else:
        train_recs, val_recs = split_records(records, data.val_fraction)
    kw = {"overlong": data.overlong, "thinking": data.thinking,
          "last_turn_only": data.last_turn_only}
    train, stats = encode_records(train_recs, tokenizer, max_len, **kw)
    val, val_stats = encode_records(val_recs, tokenizer, max_len, **kw)
    if not train:
        raise ValueError(f"data.train: no usable conversation among {len(train_recs)} "
                         f"({stats.dropped_overlong} longer than train.seq_len + 1 = {max_len}, "
                         f"{stats.no_trainable} without assistant tokens); raise train.seq_len "
                         "or set data.overlong = \"truncate\"")
    if stats.dropped_overlong:
        log.warning("data: dropped %d of %d conversations longer than train.seq_len + 1 = %d "
                    "tokens (longest %d); raise train.seq_len or set data.overlong = "
                    "\"truncate\"", stats.dropped_overlong, stats.records, max_len,
                    stats.longest_dropped)
    info = {"train": stats.to_dict(), "val": val_stats.to_dict()}
    if data.topk:
        info["kd"] = attach_topk(train, data.topk, tokenizer)
        attach_topk(val, data.topk, tokenizer, required=False)
    return train, val, info


def attach_topk(samples: Sequence[Sample], path: str, tokenizer: Any,
                required: bool = True) -> dict[str, Any]:
    """Give every sample its teacher top-k from ``path`` (``ValueError`` when the file was
    made with another tokenizer or, if ``required``, lacks samples)."""
    from nanoseek.distill.traces import TeacherTopK

    topk = TeacherTopK.load(path)
    if topk.tokenizer != tokenizer.fingerprint():
        raise ValueError(f"data.topk: {path} was scored with another tokenizer (fingerprint "
                         f"{topk.tokenizer[:12]} vs {tokenizer.fingerprint()[:12]}); logit KD "
                         "needs the student's tokenizer; rescore or set sft.kd_weight = 0")
    missing = 0
    for s in samples:
        found = topk.lookup(s.key)
        if found is None:
            missing += 1
            continue
        s.kd_pos, s.kd_ids, s.kd_logprobs = (found[0].astype(int), found[1].astype(int),
                                             found[2])
    if missing and required:
        raise ValueError(f"data.topk: {missing} of {len(samples)} conversations have no teacher "
                         f"log-probs in {path}; rescore the traces (nanoseek distill does)")
    return {"k": topk.k, "teacher": topk.teacher, "sequences": len(samples) - missing}


def plan_run(run: RunConfig, loader: PackedSFTLoader, epochs: float, world_size: int
             ) -> RunConfig:
    """``run`` with ``steps`` derived from ``epochs`` when neither steps nor tokens is set."""
    if run.steps or run.tokens:
        return run
    if epochs <= 0:
        raise ValueError(f"sft.epochs: {epochs} must be > 0 (or set train.steps)")
    plan = BatchPlan.create(run.micro_batch, run.seq_len, world_size, run.batch_tokens)
    rows_per_step = plan.batch_tokens // run.seq_len
    rows = len(loader.rows_of_epoch(0))
    return replace(run, steps=max(1, math.ceil(epochs * rows / rows_per_step)))


# -------------------------------------------------------------------- the stage
def run_sft(cfg: SFTConfig, info: DistInfo | None = None, resume: str | None = None,
            model: nn.Module | None = None, stage: str = "sft") -> SFTResult:
    """Fine-tune: check the inputs, build data, model and trainer, train, export the model
    to ``train.out_dir/model``. ``model``: use this module instead of building ``[model]``."""
    from nanoseek.distill.kd import check_kd

    info = info or init_distributed(cfg.train.device)
    check_kd(cfg.sft.kd_loss, cfg.sft.kd_beta, cfg.sft.kd_weight)
    if cfg.sft.kd_weight > 0 and not cfg.data.topk:
        raise ValueError("sft.kd_weight > 0 needs data.topk (the teacher's top-k log-probs)")
    run = cfg.train
    resume_from = resolve_resume(resume, Path(run.out_dir))
    tokenizer = load_sft_tokenizer(cfg)
    train, val, data_info = load_samples(cfg, tokenizer)
    if run.eval_every and not val:
        raise ValueError("train.eval_every needs validation data: set data.val or "
                         "data.val_fraction (or train.eval_every = 0)")
    pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)
    loader = PackedSFTLoader(train, run.seq_len, run.micro_batch, pad_id=pad_id, rank=info.rank,
                             world_size=info.world_size, seed=run.seed,
                             shuffle=cfg.data.shuffle, window=cfg.data.pack_window)
    run = plan_run(run, loader, cfg.sft.epochs, info.world_size)
    if model is None:
        config = model_config(cfg.model, tokenizer.vocab_size, run.seq_len)
        if not cfg.model.path:
            config = config.replace(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
        torch.manual_seed(run.seed)
        model = build_or_load(cfg.model, config)
    loss = SFTLoss(cfg.sft.kd_weight, cfg.sft.kd_loss, cfg.sft.kd_beta)
    val_fn = make_val_fn(val, run, pad_id, info, loss, cfg.data.pack_window) if val else None
    from nanoseek.cost import train_flops_per_token

    flops = train_flops_per_token(model.config, run.seq_len, include_mtp=False)
    trainer = Trainer(model, cfg.optim, run, loss, loader, eval_fn=val_fn, tokenizer=tokenizer,
                      info=info, resume_from=resume_from, flops_per_token=flops, stage=stage,
                      run_meta=to_dict(cfg))
    out = Path(run.out_dir)
    if info.is_main:
        from nanoseek.eval.run import write_json_atomic

        write_json_atomic(out / "sft_config.json", to_dict(replace(cfg, train=run)))
        write_json_atomic(out / "sft_data.json", data_info)
    state = trainer.fit()
    return SFTResult(out / "model", state, data_info)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanoseek sft``; returns the exit code."""
    parser = stage_parser("nanoseek sft", "Supervised fine-tuning on chat JSONL.",
                          "model, data, sft, optim, train", "--sft.epochs 2")
    return run_stage(parser, SFTConfig, run_sft, argv,
                     done=lambda r: f"{r.state.step} steps -> {r.model_dir}")


if __name__ == "__main__":
    sys.exit(main())
