"""On-policy distillation: the student samples, the teacher scores the student's tokens.

Each training step the student (its current weights, through ``nanoseek.infer.LLM``) answers
``prompts`` problems; the teacher then scores every sampled sequence by teacher forcing
(``traces.score_sequences``: its top-k next-token log-probs at each completion token), and the
student minimizes a divergence to the teacher on its own samples (``reverse_kl`` by default:
mode-seeking, the GKD λ = 1 / "on-policy distillation" setting; ``jsd`` and ``forward_kl``
also work) with the same packed batches and ``SFTLoss`` as the off-policy stage, at weight 1
(no cross-entropy on the student's own tokens). Unlike RL, every token gets a dense signal
and no reward is needed. Teacher and student must share a tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nanoseek.distill.traces import score_sequences
from nanoseek.distributed import DistInfo
from nanoseek.train.config import OptimConfig, RunConfig
from nanoseek.train.sft_data import Sample, make_batch, pack_rows

BLOCK = 16


@dataclass
class OnPolicySection:
    """``[onpolicy]``: steps (0 = off), prompts sampled per step and rank, sampling, the
    divergence and K, and the learning rate (0: ``optim.lr``)."""

    steps: int = 0
    prompts: int = 8
    max_tokens: int = 128
    temperature: float = 1.0
    loss: str = "reverse_kl"
    beta: float = 0.5
    top_k: int = 20
    lr: float = 0.0


class OnPolicySource:
    """``BatchSource`` of student samples scored by the teacher (module docstring).

    ``next_batch()`` → ``make_batch``'s dict (``targets`` = the sampled tokens, ``kd_*`` = the
    teacher's top-k at them). Problem ``j`` of the stream is sampled with seed ``seed + j``,
    so ``state_dict()`` (the step counter) is all a resume needs."""

    def __init__(self, student: nn.Module, teacher: nn.Module, tokenizer: Any,
                 problems: list[Any], section: OnPolicySection, seq_len: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not problems:
            raise ValueError("onpolicy: no problems to sample")
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.problems, self.section, self.seq_len = problems, section, seq_len
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.calls = 0
        self.pad_id = next(i for i in (tokenizer.pad_id, tokenizer.eos_id, 0) if i is not None)

    def _chunk(self) -> list[tuple[int, Any]]:
        n = self.section.prompts
        first = (self.calls * self.world_size + self.rank) * n
        return [(j, self.problems[j % len(self.problems)]) for j in range(first, first + n)]

    @torch.no_grad()
    def _sample(self, prompts: list[list[int]], seeds: list[int]) -> list[list[int]]:
        from nanoseek.infer import LLM, SamplingParams

        blocks = len(prompts) * -(-(self.seq_len + 1) // BLOCK) + 2
        llm = LLM(self.student, self.tokenizer, num_blocks=blocks, block_size=BLOCK,
                  max_model_len=self.seq_len + 1, enable_prefix_caching=False)
        params = [SamplingParams(temperature=self.section.temperature, seed=s,
                                 max_tokens=max(1, min(self.section.max_tokens,
                                                       self.seq_len - len(p))))
                  for p, s in zip(prompts, seeds, strict=True)]
        try:
            outs = llm.generate(prompts, params)
        finally:
            self.student.train()
        return [list(o.outputs[0].token_ids) for o in outs]

    def next_batch(self) -> dict[str, torch.Tensor]:
        from nanoseek.data.tasks import chat_messages

        chunk = self._chunk()
        prompts = [self.tokenizer.render_chat(chat_messages(p), add_generation_prompt=True).ids
                   for _, p in chunk]
        prompts = [p[: self.seq_len - 1] for p in prompts]
        completions = self._sample(prompts, [self.seed + j for j, _ in chunk])
        self.calls += 1
        samples = []
        for prompt, completion in zip(prompts, completions, strict=True):
            ids = np.asarray(prompt + completion, np.int64)[: self.seq_len + 1]
            mask = np.arange(len(ids)) >= len(prompt)
            samples.append(Sample(ids, mask))
        scored = score_sequences(self.teacher, [(s.ids, s.mask) for s in samples],
                                 self.section.top_k, self.tokenizer.vocab_size)
        for s, (pos, top, lp) in zip(samples, scored, strict=True):
            s.kd_pos, s.kd_ids, s.kd_logprobs = pos.astype(np.int64), top.astype(np.int64), lp
        rows = pack_rows([len(s) for s in samples], self.seq_len + 1, range(len(samples)))
        return make_batch(samples, rows, self.seq_len, self.pad_id)

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])


def run_onpolicy(section: OnPolicySection, init_dir: Path, teacher: nn.Module, tokenizer: Any,
                 problems_section: Any, optim: OptimConfig, train: RunConfig, out: Path,
                 info: DistInfo, resume: str | None = None) -> dict[str, Any]:
    """Train the student in ``init_dir`` for ``section.steps`` on-policy steps; the result is
    exported to ``out/model``. Returns ``{"steps", "tokens"}``."""
    from nanoseek.checkpoint import load_pretrained
    from nanoseek.eval.run import load_problems
    from nanoseek.train.loop import Trainer
    from nanoseek.train.pretrain import resolve_resume
    from nanoseek.train.sft import SFTLoss

    p = problems_section
    problems = load_problems(p.task, p.num_problems, p.seed, p.split, p.difficulty or None)
    model = load_pretrained(init_dir, dtype=torch.float32)
    source = OnPolicySource(model, teacher, tokenizer, problems, section, train.seq_len,
                            seed=train.seed, rank=info.rank, world_size=info.world_size)
    optim = replace(optim, lr=section.lr or optim.lr,
                    warmup_steps=min(optim.warmup_steps, section.steps // 10))
    run = replace(train, out_dir=str(out), steps=section.steps, tokens=0, batch_tokens=0,
                  batch_ramp_start=0, eval_every=0, micro_batch=1)
    loss = SFTLoss(1.0, section.loss, section.beta)
    trainer = Trainer(model, optim, run, loss, source, tokenizer=tokenizer, info=info,
                      resume_from=resolve_resume(resume, out), stage="onpolicy")
    state = trainer.fit()
    return {"steps": state.step, "tokens": state.tokens}
