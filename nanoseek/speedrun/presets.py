"""Speedrun presets: the sizes of every stage, and how long each stage is expected to take.

A preset is data only. Each training stage's settings are ``--section.key value`` overrides of
that stage's own config (``nanoseek pretrain``, ``sft``, ``grpo``, ``distill``), so any stage can
be rerun by hand with the same numbers (``report.md`` lists them). ``expected_s`` seeds the
progress display's ETA; it is refined as stages finish. ``timing_note`` says whether a preset's
times were measured, and on what, or are estimates.

* ``ci``: every stage in a couple of minutes, for the test suite; the models are too small to
  learn the task (the student then falls back to the SFT data, see ``stages.py``).
* ``cpu`` (default): the whole story on a 2-core CPU in about 12 minutes (measured). The task
  is 2-digit addition and subtraction with worked column-by-column solutions written by a
  fallible teacher (it forgets a carry or borrow 30% of the time, ``slip_rate``); the sizes
  were chosen so that a tiny DeepSeek-V3 learns the procedure from them, slips included
  (greedy ~95%, sampled pass@1 ~85%), and GRPO, rewarded by the checker, unlearns the slips.
* ``gpu``: the same stages, larger (the ``small`` V3-shaped preset, ~105M total / ~24M active
  parameters, 3-digit arithmetic with ``*``), bf16 on one GPU. Estimated, not measured: about
  50 minutes on one H100-class GPU (pretraining ~15 min, GRPO ~15 min, the rest ~20 min). Under
  ``torchrun --nproc_per_node N -m nanoseek.speedrun.run --preset gpu`` the training stages
  (pretrain, SFT, GRPO, the student's SFT) split their batches over the N ranks; corpus,
  tokenizer, sampling, eval and the report run on rank 0, so 8 GPUs take an estimated ~25-30
  minutes rather than 1/8.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

STAGE_NAMES = ("corpus", "tokenizer", "data", "pretrain", "sft", "grpo", "sample", "distill",
               "eval", "speed", "report")


@dataclass(frozen=True)
class Preset:
    """Everything a speedrun's size depends on.

    ``task`` / ``task_args``: the verifiable task the chat models are fine-tuned, reinforced,
    distilled and evaluated on (``nanoseek.data.tasks``; its test split is held out).
    ``corpus``: ``(task, generator kwargs, count)`` of the pretraining mix (train split, worked
    solutions) besides the plain text shipped with the repository (``text_sources``);
    ``chat_fraction`` of those documents are rendered as R1 chat conversations instead (the
    question with R1's instruction, then the worked solution), so the base model already reads
    the chat prompt and the cold-start SFT teaches the turn format rather than a new skill.
    The stage dicts are dotted overrides of the stage configs.
    """

    name: str
    description: str
    device: str = "cpu"
    threads: int = 0
    """torch CPU threads (0: torch's default, one per core)."""
    task: str = "arithmetic"
    task_args: dict[str, Any] = field(default_factory=dict)
    corpus: tuple[tuple[str, dict[str, Any], int], ...] = ()
    text_sources: bool = True
    chat_fraction: float = 0.0
    vocab_size: int = 1024
    sft_problems: int = 2000
    grpo_problems: int = 4000
    sample_problems: int = 300
    eval_problems: int = 100
    eval_samples: int = 4
    eval_max_tokens: int = 96
    reward_workers: int = 0
    pretrain: dict[str, Any] = field(default_factory=dict)
    sft: dict[str, Any] = field(default_factory=dict)
    grpo: dict[str, Any] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    distill: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    expected_s: dict[str, float] = field(default_factory=dict)
    timing_note: str = "estimates"
    machine: str = "2-vCPU cloud VM"
    price_per_hour: float = 0.10
    """Dollars per hour of the machine the preset targets (for the cost tables)."""

    def expected(self, stage: str) -> float:
        """Expected seconds of ``stage`` (1 for stages the preset does not list)."""
        return float(self.expected_s.get(stage, 1.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (for the run record and the report)."""
        from dataclasses import asdict

        out = asdict(self)
        out["corpus"] = [list(c) for c in self.corpus]
        return out


# -------------------------------------------------------------------- shared pieces
_TEACHER = {  # a tiny DeepSeek-V3: MLA, 1 dense + 2 MoE layers (shared + routed experts), MTP
    "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 64,
    "num_hidden_layers": 3, "first_k_dense_replace": 1, "num_attention_heads": 4,
    "q_lora_rank": 64, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 16,
    "v_head_dim": 32, "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 2,
    "n_group": 4, "topk_group": 2, "num_nextn_predict_layers": 1,
    "max_position_embeddings": 512,
}
_STUDENT = {  # a dense Qwen2 with fewer layers and no experts
    "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
}
_SLIP_RATE = 0.3  # the task's worked solutions come from a fallible teacher that forgets a
# carry or borrow 30% of the time (~20% of solutions end wrong): imitation (pretraining, SFT)
# copies the slips, GRPO's checker reward unlearns them. With exact solutions GRPO does not
# beat SFT at this size (README, "The task and its fallible teacher" and after)
_CORPUS = (  # ~85% of the tokens are the task the chat models are trained and tested on
    ("arithmetic", {"difficulty": 2, "ops": "+-", "slip_rate": _SLIP_RATE}, 24000),
    ("arithmetic", {"difficulty": 1}, 2000),
    ("word_problems", {"difficulty": 1}, 1000),
)

CPU = Preset(
    name="cpu",
    description="the default: the whole story on a 2-core CPU in about 12 minutes",
    task_args={"difficulty": 2, "ops": "+-", "slip_rate": _SLIP_RATE},
    corpus=_CORPUS,
    sample_problems=4000,
    chat_fraction=0.5,
    eval_problems=200,
    eval_max_tokens=128,
    vocab_size=384,  # small enough that BPE keeps most digits apart (copying them is easy)
    pretrain={  # 480 steps sat on the edge of learning the task: one corpus (the README is in
        # it, so every edit changes the run) gave a 76.5% base model, the next 12% (val loss
        # 0.236 vs 0.324); 720 steps took that second corpus to 81%
        "model.preset": "tiny", "model.overrides": _TEACHER,
        "train.steps": 720, "train.seq_len": 256, "train.micro_batch": 32,
        "train.save_every": 180, "train.eval_every": 180, "train.eval_batches": 4,
        "train.log_every": 20, "optim.lr": 3e-3, "optim.warmup_steps": 30,
        "optim.schedule": "wsd", "optim.bias_update_speed": 0.01,
    },
    sft={  # without chat documents in pretraining, 100 steps left 3%, 200 gave 35% or 92%
        # by run (copying digits across R1's instruction is learned suddenly); with them the
        # SFT model starts from what pretraining taught
        "train.steps": 100, "train.seq_len": 256, "train.micro_batch": 16,
        "train.save_every": 50, "train.log_every": 10, "optim.lr": 1e-3,
        "optim.warmup_steps": 10, "optim.schedule": "cosine",
    },
    grpo={  # max_new_tokens must fit the longest worked solution (~90 tokens: a<b with a
        # borrow): at 80 those rollouts were cut off and scored 0, and GRPO learned to skip
        # the a<b branch (much of earlier runs' greedy -3). With exact solutions GRPO still
        # does not beat SFT here (greedy -2, pass@1 +1.5); with the fallible teacher it
        # unlearns the slips
        "grpo.group_size": 8, "grpo.prompts_per_step": 16, "grpo.max_new_tokens": 128,
        "grpo.beta": 0.04, "grpo.loss_type": "dapo", "optim.lr": 3e-5,
        "optim.warmup_steps": 10, "train.steps": 150, "train.micro_batch": 64,
        "train.eval_every": 25, "train.save_every": 25, "train.log_every": 5,
        "data.eval_problems": 100, "data.eval_temperature": 0.6,
    },
    sample={"samples": 2, "max_tokens": 128, "temperature": 0.6, "keep": "all",
            "batch_size": 512},
    distill={
        "student.preset": "tiny-qwen2", "student.overrides": _STUDENT,
        # 8 epochs: at 4 the student was undertrained (held-out pass@1 66-78% over four
        # runs; 6 epochs 89%, 8 epochs 95% on one run's traces), +38 s
        "kd.weight": 0.5, "kd.top_k": 8, "sft.epochs": 8.0,
        "train.seq_len": 256, "train.micro_batch": 16, "train.log_every": 10,
        "optim.lr": 3e-3, "optim.warmup_steps": 10,
    },
    speed={"prompts": 8, "max_tokens": 64, "batch_prompts": 64},
    expected_s={"corpus": 1, "tokenizer": 1, "data": 2, "pretrain": 290, "sft": 16,
                "grpo": 205, "sample": 50, "distill": 79, "eval": 23, "speed": 11,
                "report": 2},
    timing_note="measured on an idle 2-core x86 CPU (Intel Xeon, AVX-512, torch 2.13 CPU) "
                "on 2026-11-30",
)

CI = replace(
    CPU, name="ci", description="a miniature run of every stage (minutes), for the test suite",
    threads=1,  # tiny matrices: one thread is as fast, and robust on a shared machine
    corpus=(("arithmetic", {"difficulty": 1, "slip_rate": _SLIP_RATE}, 1500),
            ("word_problems", {"difficulty": 1}, 200)),
    task_args={"difficulty": 1, "slip_rate": _SLIP_RATE}, text_sources=True,
    vocab_size=400, sft_problems=400,
    grpo_problems=400, sample_problems=24, eval_problems=16, eval_samples=2,
    eval_max_tokens=64,
    pretrain={**CPU.pretrain, "model.overrides": {**_TEACHER, "hidden_size": 48,
                                                   "num_hidden_layers": 2},
              "train.steps": 30, "train.seq_len": 128, "train.micro_batch": 8,
              "train.save_every": 15, "train.eval_every": 15, "train.eval_batches": 2},
    sft={**CPU.sft, "train.steps": 20, "train.seq_len": 128, "train.micro_batch": 8,
         "train.save_every": 10},
    grpo={**CPU.grpo, "grpo.group_size": 4, "grpo.prompts_per_step": 4,
          "grpo.max_new_tokens": 64, "train.steps": 4, "train.eval_every": 2,
          "train.save_every": 2, "data.eval_problems": 8},
    sample={**CPU.sample, "samples": 2, "max_tokens": 64, "temperature": 1.0},
    distill={**CPU.distill, "sft.epochs": 1.0, "train.steps": 10, "train.seq_len": 128,
             "train.micro_batch": 8,
             "student.overrides": {**_STUDENT, "hidden_size": 32, "num_hidden_layers": 1}},
    speed={"prompts": 2, "max_tokens": 16, "batch_prompts": 8},
    expected_s={"corpus": 2, "tokenizer": 3, "data": 3, "pretrain": 20, "sft": 10,
                "grpo": 15, "sample": 5, "distill": 10, "eval": 15, "speed": 5, "report": 5},
)

GPU = replace(
    CPU, name="gpu", description="the same stages, larger, on one GPU (bf16)", device="cuda",
    sft_problems=20000, grpo_problems=20000, sample_problems=4000, eval_problems=500,
    eval_samples=8, eval_max_tokens=384, reward_workers=4,
    task_args={"difficulty": 3, "ops": "+-*", "slip_rate": _SLIP_RATE},
    corpus=(("arithmetic", {"difficulty": 3, "slip_rate": _SLIP_RATE}, 300000),
            ("arithmetic", {"difficulty": 2, "slip_rate": _SLIP_RATE}, 100000),
            ("arithmetic", {"difficulty": 1}, 20000),
            ("word_problems", {"difficulty": 2}, 50000),
            ("countdown", {"difficulty": 3}, 30000)),
    pretrain={**CPU.pretrain, "model.preset": "small",
              "model.overrides": {"max_position_embeddings": 1024},
              "train.steps": 3000, "train.seq_len": 1024, "train.micro_batch": 32,
              "train.save_every": 500, "train.eval_every": 500, "train.eval_batches": 16,
              "train.log_every": 50, "train.precision": "bf16", "optim.lr": 1.5e-3,
              "optim.warmup_steps": 100},
    sft={**CPU.sft, "train.steps": 600, "train.seq_len": 1024, "train.micro_batch": 32,
         "train.save_every": 200, "train.precision": "bf16", "optim.lr": 3e-4},
    grpo={**CPU.grpo, "grpo.group_size": 16, "grpo.prompts_per_step": 32,
          "grpo.max_new_tokens": 384, "train.steps": 150, "train.micro_batch": 128,
          "train.eval_every": 25, "train.save_every": 25, "data.eval_problems": 500,
          "train.precision": "bf16", "optim.lr": 2e-5, "grpo.beta": 0.001},
    sample={"samples": 8, "max_tokens": 384, "temperature": 0.8, "keep": "all"},
    distill={**CPU.distill, "student.overrides": {**_STUDENT, "hidden_size": 384,
                                                  "intermediate_size": 1024,
                                                  "num_hidden_layers": 4,
                                                  "num_attention_heads": 6,
                                                  "num_key_value_heads": 2,
                                                  "max_position_embeddings": 1024},
             "sft.epochs": 3.0, "train.seq_len": 1024, "train.micro_batch": 32,
             "train.precision": "bf16", "optim.lr": 1e-3},
    speed={"prompts": 16, "max_tokens": 256, "batch_prompts": 256},
    expected_s={"corpus": 60, "tokenizer": 120, "data": 120, "pretrain": 900, "sft": 180,
                "grpo": 900, "sample": 240, "distill": 180, "eval": 180, "speed": 60,
                "report": 20},
    timing_note="rough estimates for one H100-class GPU, not measured",
    machine="1x H100 80GB (cloud, on demand)", price_per_hour=2.0,
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CPU, CI, GPU)}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``ValueError`` listing the choices otherwise)."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
