"""Pretraining (DeepSeek-V3 recipe at any scale): ``nanoseek pretrain --config run.toml``.

The shared ``Trainer`` plus the LM loss (next token + λ·MTP + α·sequence balance) and the
packed loader over a prepared data folder (``nanoseek data prepare``). A config file::

    [model]
    preset = "tiny"            # or path = "runs/base/model" (an HF dir: continue training)
    init_std = 0.006           # V3's init; 0 keeps the config's initializer_range
    overrides = {num_hidden_layers = 4}

    [data]
    dir = "data/tiny"          # tokenizer: the manifest's, or [data] tokenizer = "tok/"

    [train]
    out_dir = "runs/pretrain"
    seq_len = 256
    micro_batch = 8
    batch_tokens = 8192        # per optimizer step; accumulation derived
    steps = 1000               # or tokens = 10_000_000
    save_every = 200
    eval_every = 100

    [optim]
    lr = 3e-3
    warmup_steps = 50
    schedule = "v3"            # or "wsd", "cosine", "constant"

    [loss]
    mtp_weight = [[0.0, 0.3], [0.676, 0.1]]
    balance_alpha = 1e-4

Any key can be overridden: ``--train.steps 20 --optim.lr=1e-3``. ``--resume`` continues the
latest checkpoint in ``train.out_dir`` (``--resume PATH`` a given one). Multi-process:
``torchrun --nproc_per_node N -m nanoseek.train.pretrain --config run.toml``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nanoseek.checkpoint import CheckpointError
from nanoseek.config import ModelConfig, get_preset
from nanoseek.distributed import DistInfo, all_reduce_sum_
from nanoseek.train import state as ckpt
from nanoseek.train.cli import run_stage, stage_parser
from nanoseek.train.config import OptimConfig, Piecewise, RunConfig, to_dict
from nanoseek.train.loop import Trainer, TrainState
from nanoseek.train.losses import LMLoss

# The 256 characters GPT-2 style byte-level BPE uses for the bytes 0..255.
_BYTE_CHARS = frozenset(
    [chr(b) for b in (*range(33, 127), *range(161, 173), *range(174, 256))]
    + [chr(256 + n) for n in range(68)])


@dataclass
class ModelSection:
    """``[model]``: a ``preset`` (fresh weights) or an HF ``path`` (its weights), plus
    ``overrides`` of config.json fields and the init std for fresh weights."""

    preset: str = "tiny"
    path: str = ""
    init_std: float = 0.006
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """``[data]``: a folder written by ``nanoseek data prepare``."""

    dir: str = "data"
    tokenizer: str = ""
    val_split: str = "val"
    shuffle: bool = True
    buffer_docs: int = 1000


@dataclass
class LossSection:
    """``[loss]``: λ for MTP and α for the sequence-wise balance loss (numbers or
    ``[[fraction, value], ...]``)."""

    mtp: bool = True
    mtp_weight: Piecewise = field(default_factory=lambda: [[0.0, 0.3], [0.676, 0.1]])
    balance_alpha: Piecewise = 1e-4


@dataclass
class PretrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/pretrain"))


# -------------------------------------------------------------------- building blocks
def load_tokenizer(data: DataSection):
    """The data folder's manifest and tokenizer, checked against each other."""
    from nanoseek.data.manifest import check_tokenizer, load_manifest
    from nanoseek.tokenizer import Tokenizer

    if not Path(data.dir).is_dir():
        raise ValueError(f"data.dir: {data.dir} does not exist; prepare a corpus with "
                         f"`nanoseek data prepare --out {data.dir} ...`")
    manifest = load_manifest(data.dir)
    manifest.split("train")  # raises if the corpus is empty
    path = data.tokenizer or manifest.tokenizer_path
    if not path:
        raise ValueError("data.tokenizer: the manifest does not say which tokenizer made the "
                         "data; set [data] tokenizer = \"DIR\"")
    tokenizer = Tokenizer.from_pretrained(path)
    check_tokenizer(manifest, tokenizer)
    return manifest, tokenizer


def model_config(section: ModelSection, vocab_size: int, seq_len: int) -> ModelConfig:
    """The model's config: preset or HF dir, overrides applied, checked against the data."""
    if section.path:
        from nanoseek.checkpoint import read_config

        config = read_config(section.path)[0]
    else:
        config = get_preset(section.preset)
        if "vocab_size" not in section.overrides:  # a fresh model takes the tokenizer's vocab
            config = config.replace(vocab_size=vocab_size)
    if section.overrides:
        try:
            config = config.replace(**section.overrides)
        except TypeError as e:
            raise ValueError(f"model.overrides: {e}; use config.json field names") from None
    if vocab_size > config.vocab_size:
        raise ValueError(f"model.vocab_size: the tokenizer has {vocab_size} ids but the model "
                         f"only {config.vocab_size} embeddings; use the model's tokenizer or "
                         "set model.overrides.vocab_size")
    if seq_len > config.max_position_embeddings:
        raise ValueError(f"train.seq_len: {seq_len} exceeds the model's position range "
                         f"max_position_embeddings = {config.max_position_embeddings}; "
                         "lower train.seq_len")
    return config


def build_or_load(section: ModelSection, config: ModelConfig) -> nn.Module:
    """Fresh weights (``init_weights(init_std)``) or the HF dir's, in float32."""
    from nanoseek.checkpoint import load_pretrained
    from nanoseek.model import build_model

    if section.path:
        model = load_pretrained(section.path, dtype=torch.float32)
        if not ckpt.same_architecture(model.config, config):
            model = _resized(model, config)
        return model
    model = build_model(config)
    if section.init_std > 0 and hasattr(model, "init_weights"):
        model.init_weights(section.init_std)
    return model


def _resized(model: nn.Module, config: ModelConfig) -> nn.Module:
    """A model of ``config`` holding ``model``'s weights (overrides must keep shapes)."""
    from nanoseek.model import build_model

    fresh = build_model(config)
    try:
        fresh.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise ValueError(f"model.overrides: they change tensor shapes of {config.model_type} "
                         f"weights loaded from model.path ({str(e).splitlines()[0]})") from None
    return fresh


def token_bytes(tokenizer, size: int) -> torch.Tensor:
    """UTF-8 bytes each id stands for ``[size]`` (special tokens 0), for bits per byte."""
    out = torch.zeros(size, dtype=torch.float32)
    special = {i for i, tok in tokenizer.backend.get_added_tokens_decoder().items()
               if tok.special}
    for i in range(min(size, tokenizer.vocab_size)):
        piece = tokenizer.id_to_token(i)
        if i in special or piece is None:
            continue
        if all(ch in _BYTE_CHARS for ch in piece):
            out[i] = len(piece)
        else:  # an added token stored as plain text
            out[i] = len(tokenizer.decode([i]).encode("utf-8"))
    return out


def make_val_fn(data: DataSection, seq_len: int, batch_size: int, max_batches: int,
                bytes_per_token: torch.Tensor, info: DistInfo):
    """``val_fn(model) -> {"val_loss", "val_bpb"}`` over the held-out split (its first
    ``max_batches`` micro-batches counted over all ranks, 0: all of it), every rank a share.

    Bits per byte: the summed loss (nats → bits) over the UTF-8 bytes the targets stand for;
    targets that stand for no bytes (special tokens such as BOS) are left out of both sums.
    """
    from nanoseek.data.loader import iter_batches

    per_rank = math.ceil(max_batches / info.world_size)

    def val_fn(model: nn.Module) -> dict[str, float]:
        sums = torch.zeros(4, dtype=torch.float64, device=info.device)
        batches = iter_batches(data.dir, data.val_split, seq_len=seq_len, batch_size=batch_size,
                               rank=info.rank, world_size=info.world_size,
                               buffer_docs=data.buffer_docs)
        for i, batch in enumerate(batches):
            if per_rank and i >= per_rank:
                break
            batch = batch.to(info.device)
            logits = model(batch[:, :-1]).logits
            targets = batch[:, 1:].reshape(-1)
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets,
                                  reduction="none").double()
            nbytes = bytes_per_token.to(info.device)[targets].double()
            sums += torch.stack([nll.sum(), torch.tensor(nll.numel(), device=nll.device),
                                 (nll * (nbytes > 0)).sum(), nbytes.sum()])
        all_reduce_sum_(sums)
        loss_sum, count, byte_nll, nbytes = sums.tolist()
        return {"val_loss": loss_sum / max(count, 1),
                "val_bpb": byte_nll / math.log(2) / max(nbytes, 1)}

    return val_fn


def resolve_resume(resume: str | None, out_dir: Path) -> Path | None:
    """``None`` (fresh run), ``"latest"`` or a checkpoint path → a checked checkpoint path."""
    if resume is None:
        return None
    if resume == "latest":
        path = ckpt.latest_checkpoint(out_dir / "checkpoints")
        if path is None:
            raise CheckpointError(f"--resume: no checkpoint under {out_dir / 'checkpoints'}; "
                                  "run without --resume to start fresh")
    else:
        path = Path(resume)
    ckpt.read_meta(path)
    return path


# -------------------------------------------------------------------- the stage
def run_pretrain(cfg: PretrainConfig, info: DistInfo, resume: str | None = None) -> TrainState:
    """Check the inputs, build model, data and trainer, and train."""
    run = cfg.train
    resume_from = resolve_resume(resume, Path(run.out_dir))
    manifest, tokenizer = load_tokenizer(cfg.data)
    config = model_config(cfg.model, tokenizer.vocab_size, run.seq_len)
    if not cfg.model.path:
        config = config.replace(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
    if run.eval_every:
        manifest.split(cfg.data.val_split)  # raises if there is no held-out data
    torch.manual_seed(run.seed)  # the same initial weights on every rank
    model = build_or_load(cfg.model, config)
    from nanoseek.cost import train_flops_per_token
    from nanoseek.data.loader import PackedLoader

    loader = PackedLoader(cfg.data.dir, "train", seq_len=run.seq_len, batch_size=run.micro_batch,
                          rank=info.rank, world_size=info.world_size, seed=run.seed,
                          shuffle=cfg.data.shuffle, buffer_docs=cfg.data.buffer_docs)
    val_fn = None
    if run.eval_every:
        val_fn = make_val_fn(cfg.data, run.seq_len, run.micro_batch, run.eval_batches,
                             token_bytes(tokenizer, config.vocab_size), info)
    mtp = cfg.loss.mtp and config.is_deepseek and config.num_nextn_predict_layers > 0
    loss_fn = LMLoss(cfg.loss.mtp_weight, cfg.loss.balance_alpha, mtp=mtp)
    flops = train_flops_per_token(config, run.seq_len, include_mtp=mtp)
    trainer = Trainer(model, cfg.optim, run, loss_fn, loader, eval_fn=val_fn,
                      tokenizer=tokenizer, info=info, resume_from=resume_from,
                      flops_per_token=flops, stage="pretrain", run_meta=to_dict(cfg))
    if info.is_main:
        (Path(run.out_dir) / "pretrain_config.json").write_text(
            json.dumps(to_dict(cfg), indent=2) + "\n")
    return trainer.fit()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanoseek pretrain``; returns the exit code."""
    parser = stage_parser("nanoseek pretrain", "Pretrain a DeepSeek-V3-style model.",
                          "model, data, loss, optim, train", "--train.steps 100")
    return run_stage(parser, PretrainConfig, run_pretrain, argv)


if __name__ == "__main__":
    sys.exit(main())
