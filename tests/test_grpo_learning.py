"""GRPO learns: a tiny DeepSeek-V3-shaped model, cold-started by a short SFT on 2-digit
addition to a middling pass rate, gains held-out greedy accuracy from GRPO alone (rule reward
``accuracy``, no reference answers) within a bounded number of steps. The full benchmark with
seeds and a same-compute SFT control is ``bench/grpo_learning.py``."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from nanoseek.config import get_preset
from nanoseek.data.tasks import arithmetic
from nanoseek.distributed import DistInfo
from nanoseek.model import build_model
from nanoseek.rl.grpo import GRPOConfig, build_trainer
from nanoseek.train.config import OptimConfig, RunConfig, load_config
from nanoseek.train.loop import Trainer
from nanoseek.train.losses import cross_entropy

SFT_STEPS, GRPO_STEPS, MARGIN = 400, 150, 0.05


def short(items):
    for p in items:
        p.solution = "\\boxed{" + p.answer + "}"
    return items


class AnswerRows:
    """SFT batches of ``[BOS prompt | answer EOS]`` rows, loss on the answer and EOS only."""

    def __init__(self, items, tokenizer, batch: int = 64) -> None:
        self.rows = [(tokenizer.encode(p.prompt + "\n", add_bos=True),
                      [*tokenizer.encode(p.solution), tokenizer.eos_id]) for p in items]
        self.batch, self.pad, self.rng = batch, tokenizer.pad_id, random.Random(0)

    def next_batch(self) -> dict[str, torch.Tensor]:
        picked = [self.rows[self.rng.randrange(len(self.rows))] for _ in range(self.batch)]
        width = max(len(a) + len(b) for a, b in picked)
        ids = torch.full((self.batch, width), self.pad)
        labels = torch.full((self.batch, width - 1), -100)
        for i, (a, b) in enumerate(picked):
            ids[i, : len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a) - 1 : len(a) + len(b) - 1] = torch.tensor(b)
        return {"input_ids": ids, "labels": labels}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def sft_loss(model, batch, progress):
    return cross_entropy(model(batch["input_ids"][:, :-1]).logits, batch["labels"]), {}


def cold_start(root: Path) -> Path:
    """Tokenizer + fresh tiny model + SFT_STEPS of masked cross-entropy (shared Trainer)."""
    from nanoseek.tokenizer import train_tokenizer

    train = short(arithmetic(4000, seed=0, difficulty=2, ops="+"))
    (root / "corpus.txt").write_text("\n\n".join(p.text() for p in train[:2000]))
    tok = train_tokenizer([root / "corpus.txt"], vocab_size=280)
    config = get_preset("tiny").replace(vocab_size=280, num_hidden_layers=2,
                                        num_nextn_predict_layers=0, max_position_embeddings=64,
                                        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
    torch.manual_seed(0)
    optim = OptimConfig(lr=3e-3, schedule="constant", warmup_steps=20, weight_decay=0.0)
    run = RunConfig(out_dir=str(root / "sft"), steps=SFT_STEPS, micro_batch=64, seq_len=16,
                    precision="fp32", progress=False, log_every=SFT_STEPS, device="cpu")
    Trainer(build_model(config), optim, run, sft_loss, AnswerRows(train, tok),
            tokenizer=tok, stage="sft").fit()
    return root / "sft" / "model"


def write_tasks(items, path: Path) -> str:
    path.write_text("".join(json.dumps(p.to_record()) + "\n" for p in items))
    return str(path)


@pytest.mark.slow
def test_grpo_raises_held_out_accuracy(tmp_path: Path) -> None:
    sft = cold_start(tmp_path)
    train = write_tasks(short(arithmetic(4000, seed=1, difficulty=2, ops="+")),
                        tmp_path / "train.jsonl")
    test = write_tasks(short(arithmetic(200, seed=0, difficulty=2, ops="+", split="test")),
                       tmp_path / "test.jsonl")
    settings = {"model.path": str(sft), "data.tasks": [train], "data.eval_tasks": [test],
                "data.eval_problems": 200, "grpo.group_size": 8, "grpo.prompts_per_step": 16,
                "grpo.max_new_tokens": 8, "grpo.beta": 0.0, "reward.names": ["accuracy"],
                "reward.workers": 0, "optim.lr": 1e-4, "train.out_dir": str(tmp_path / "grpo"),
                "train.steps": GRPO_STEPS, "train.eval_every": 30,
                "train.micro_batch": 64, "train.precision": "fp32", "train.progress": False,
                "train.log_every": 10, "train.device": "cpu"}
    args = [x for k, v in settings.items() for x in (f"--{k}", json.dumps(v))]
    trainer = build_trainer(load_config(GRPOConfig, None, args), DistInfo())
    before = trainer.evaluate()["eval_greedy"]
    trainer.fit()
    after = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").open()][-1]
    assert after["step"] == GRPO_STEPS
    assert 0.15 <= before <= 0.75, f"the cold start should be middling, got {before:.2f}"
    assert after["eval_greedy"] - before >= MARGIN, \
        f"greedy accuracy {before:.3f} -> {after['eval_greedy']:.3f}"
