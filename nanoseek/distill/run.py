"""Distill a teacher's reasoning into a small dense student: ``nanoseek distill --config d.toml``.

DeepSeek-R1 §2.4: sample the teacher, keep verified traces, fine-tune a Llama/Qwen2 student on
them. Stages (each resumable; rerun the command with ``--resume`` after a crash):

1. **traces**: k samples per problem from the teacher (``nanoseek.infer.LLM``), verified by
   the accuracy + format rewards, kept by rejection sampling → ``OUT/traces.jsonl`` with
   ``traces.stats.json`` (pass rate, tokens, length distribution). A teacher that solves
   nothing stops the run with the numbers (nothing else is written).
2. **top-k** (when ``kd.weight > 0``): the teacher's top-k next-token log-probs on the traces
   by teacher forcing → ``OUT/traces.topk.safetensors`` (needs a shared tokenizer).
3. **sft**: the student trains on the traces (CE on assistant tokens, plus ``kd.weight`` of a
   forward-KL / reverse-KL / JSD logit loss) through the shared trainer → ``OUT/sft/``.
4. **onpolicy** (when ``onpolicy.steps > 0``): the student samples, the teacher scores its
   tokens, the student minimizes the (reverse) KL on them → ``OUT/onpolicy/``.
5. **student**: the final weights as a plain HF ``LlamaForCausalLM`` / ``Qwen2ForCausalLM``
   directory with tokenizer and chat template → ``OUT/student`` (``transformers``,
   ``nanoseek chat`` and ``nanoseek serve`` open it), and a summary ``OUT/distill.json``.

A config file (every key can be overridden: ``--kd.weight 0.5``)::

    [teacher]
    path = "runs/r1/model"        # any model nanoseek loads (DeepSeek MoE or dense HF dir)
    [problems]
    task = "arithmetic"           # a built-in task or a JSONL task file
    num_problems = 2000
    [traces]
    samples = 4                   # k per problem; keep = "all" | "shortest"
    max_tokens = 512
    [student]
    preset = "tiny-qwen2"         # or path = HF dir; model_type = "llama" switches family
    overrides = {hidden_size = 128, num_hidden_layers = 4}
    [kd]
    weight = 0.0                  # 0: sequence-level distillation (R1); loss = "forward_kl"
    top_k = 20
    [onpolicy]
    steps = 0
    [sft]
    epochs = 2.0                  # (kd_* come from [kd])
    [data]                        # as in `nanoseek sft`; train = extra chat files mixed in
    val_fraction = 0.05
    [train]
    out_dir = "runs/distill"
    seq_len = 512
    [optim]
    lr = 1e-3
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nanoseek.distill.kd import check_kd
from nanoseek.distill.onpolicy import OnPolicySection, run_onpolicy
from nanoseek.distill.traces import generate_traces, score_traces, topk_path
from nanoseek.distributed import (
    DistInfo,
    broadcast_object,
    init_distributed,
)
from nanoseek.train.cli import run_stage, stage_parser
from nanoseek.train.config import OptimConfig, RunConfig, to_dict
from nanoseek.train.pretrain import ModelSection, model_config
from nanoseek.train.sft import SFTConfig, SFTDataSection, SFTSection, run_sft

STUDENT_TYPES = ("llama", "qwen2")


@dataclass
class TeacherSection:
    """``[teacher]``: an HF model directory (with its tokenizer) and the dtype to run it in."""

    path: str = ""
    dtype: str = ""


@dataclass
class ProblemsSection:
    """``[problems]``: a built-in task or a JSONL task file (``nanoseek.data.tasks``)."""

    task: str = "arithmetic"
    num_problems: int = 200
    split: str = "train"
    difficulty: int = 0
    seed: int = 0


@dataclass
class TracesSection:
    """``[traces]``: rejection sampling (``nanoseek.rl.sample.rejection_sample``)."""

    samples: int = 4
    max_tokens: int = 256
    temperature: float = 0.6
    top_p: float = 0.95
    keep: str = "all"
    batch_size: int = 16
    reward_workers: int = 2


@dataclass
class StudentSection:
    """``[student]``: a preset (fresh weights) or an HF ``path``; ``model_type`` switches a
    preset's family; ``overrides`` set config.json fields (sizes)."""

    preset: str = "tiny-qwen2"
    path: str = ""
    model_type: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    init_std: float = 0.02


@dataclass
class KDSection:
    """``[kd]``: logit KD weight w (``loss = (1 − w)·CE + w·KD``), the divergence and K."""

    weight: float = 0.0
    loss: str = "forward_kl"
    beta: float = 0.5
    top_k: int = 20


@dataclass
class DistillConfig:
    teacher: TeacherSection = field(default_factory=TeacherSection)
    problems: ProblemsSection = field(default_factory=ProblemsSection)
    traces: TracesSection = field(default_factory=TracesSection)
    student: StudentSection = field(default_factory=StudentSection)
    kd: KDSection = field(default_factory=KDSection)
    onpolicy: OnPolicySection = field(default_factory=OnPolicySection)
    data: SFTDataSection = field(default_factory=SFTDataSection)
    sft: SFTSection = field(default_factory=SFTSection)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-3, schedule="cosine", weight_decay=0.0, warmup_steps=10))
    train: RunConfig = field(default_factory=lambda: RunConfig(out_dir="runs/distill"))


@dataclass
class DistillResult:
    """The student directory and the summary written to ``distill.json``."""

    student_dir: Path
    summary: dict[str, Any]


# -------------------------------------------------------------------- checks
def student_model_section(s: StudentSection) -> ModelSection:
    overrides = {**({"model_type": s.model_type} if s.model_type else {}), **s.overrides}
    return ModelSection(preset=s.preset, path=s.path, init_std=s.init_std, overrides=overrides)


def check_student(cfg: DistillConfig, vocab_size: int) -> Any:
    """The student's ``ModelConfig``; ``ValueError`` unless it is dense Llama or Qwen2."""
    if cfg.student.model_type and cfg.student.model_type not in STUDENT_TYPES:
        raise ValueError(f"student.model_type: {cfg.student.model_type!r} is not a supported "
                         f"student architecture; use {' or '.join(STUDENT_TYPES)}")
    config = model_config(student_model_section(cfg.student), vocab_size, cfg.train.seq_len)
    if config.model_type not in STUDENT_TYPES:
        where = f"student.path {cfg.student.path}" if cfg.student.path else \
            f"student.preset {cfg.student.preset!r}"
        raise ValueError(f"{where}: model_type {config.model_type!r} is not a supported student "
                         f"architecture; students are dense {' or '.join(STUDENT_TYPES)} (presets "
                         "tiny-llama / tiny-qwen2 with overrides, or an HF LlamaForCausalLM / "
                         "Qwen2ForCausalLM dir)")
    return config


def load_tokenizers(cfg: DistillConfig) -> tuple[Any, Any]:
    """``(teacher_tokenizer, student_tokenizer)``; the student's is its dir's, else the
    teacher's. ``ValueError`` when token-level losses are asked for across tokenizers."""
    from nanoseek.tokenizer import Tokenizer

    if not cfg.teacher.path or not Path(cfg.teacher.path).is_dir():
        raise ValueError(f"teacher.path: {cfg.teacher.path!r} is not a model directory; give "
                         "an HF-format dir (config.json, weights, tokenizer.json)")
    teacher_tok = Tokenizer.from_pretrained(cfg.teacher.path)
    student_tok = teacher_tok
    if cfg.student.path and (Path(cfg.student.path) / "tokenizer.json").is_file():
        student_tok = Tokenizer.from_pretrained(cfg.student.path)
    token_level = cfg.kd.weight > 0 or cfg.onpolicy.steps > 0
    if token_level and teacher_tok.fingerprint() != student_tok.fingerprint():
        raise ValueError(
            f"kd.weight = {cfg.kd.weight}, onpolicy.steps = {cfg.onpolicy.steps}: token-level "
            "distillation needs teacher and student to share a tokenizer, but the teacher's "
            f"(vocab {teacher_tok.vocab_size}, fingerprint {teacher_tok.fingerprint()[:12]}) "
            f"differs from the student's (vocab {student_tok.vocab_size}, fingerprint "
            f"{student_tok.fingerprint()[:12]}); set kd.weight = 0 and onpolicy.steps = 0 for "
            "sequence-level distillation, which works across tokenizers")
    return teacher_tok, student_tok


def check_config(cfg: DistillConfig) -> tuple[Any, Any, Any, list[Any]]:
    """Every cheap check before any sampling; returns ``(teacher_tok, student_tok,
    student_config, problems)``."""
    from nanoseek.eval.run import load_problems

    check_kd(cfg.kd.loss, cfg.kd.beta, cfg.kd.weight)
    check_kd(cfg.onpolicy.loss, cfg.onpolicy.beta)
    teacher_tok, student_tok = load_tokenizers(cfg)
    student = check_student(cfg, student_tok.vocab_size)
    p = cfg.problems
    problems = load_problems(p.task, p.num_problems, p.seed, p.split, p.difficulty or None)
    return teacher_tok, student_tok, student, problems


def active_params(config: Any) -> int:
    from nanoseek.cost import closed_form_params

    return closed_form_params(config).active


# -------------------------------------------------------------------- stages
def _teacher_llm(cfg: DistillConfig, generator: Any, info: DistInfo) -> Any:
    if generator is not None:
        return generator
    from nanoseek.infer import LLM

    return LLM(cfg.teacher.path, dtype=cfg.teacher.dtype or None, device=info.device)


def _teacher_model(cfg: DistillConfig, llm: Any, info: DistInfo) -> Any:
    model = getattr(llm, "model", None)
    if model is None or not hasattr(model, "forward_hidden"):
        from nanoseek.checkpoint import load_pretrained

        model = load_pretrained(cfg.teacher.path, dtype=cfg.teacher.dtype or None)
    return model.to(info.device)


def make_traces(cfg: DistillConfig, llm: Any, problems: list[Any], out: Path
                ) -> dict[str, Any]:
    p, t = cfg.problems, cfg.traces
    stats = generate_traces(llm, problems, out / "traces.jsonl", samples=t.samples,
                            max_tokens=t.max_tokens, temperature=t.temperature, top_p=t.top_p,
                            seed=p.seed, keep=t.keep, batch_size=t.batch_size,
                            reward_workers=t.reward_workers, progress=cfg.train.progress)
    return stats.to_dict()


def teacher_stages(cfg: DistillConfig, generator: Any, student_tok: Any, problems: list[Any],
                   out: Path, info: DistInfo) -> dict[str, Any]:
    """Traces, then (for logit KD) the teacher's top-k on them; returns their statistics."""
    llm = _teacher_llm(cfg, generator, info)
    summary: dict[str, Any] = {"traces": make_traces(cfg, llm, problems, out)}
    if cfg.kd.weight > 0:
        from nanoseek.train.sft_data import read_chat_jsonl

        teacher = _teacher_model(cfg, llm, info)
        traces = out / "traces.jsonl"
        topk = score_traces(teacher, student_tok, read_chat_jsonl(traces), topk_path(traces),
                            cfg.kd.top_k, thinking=cfg.data.thinking,
                            last_turn_only=cfg.data.last_turn_only,
                            teacher_name=cfg.teacher.path)
        summary["topk"] = {"k": topk.k, "sequences": len(topk.entries)}
        summary["teacher_active_params"] = active_params(teacher.config)
    return summary


def sft_config(cfg: DistillConfig, out: Path, student_tok_dir: str) -> SFTConfig:
    """The SFT stage's config: traces (+ extra ``data.train`` files), teacher top-k for KD."""
    extra = [cfg.data.train] if isinstance(cfg.data.train, str) else list(cfg.data.train)
    data = replace(cfg.data, train=[str(out / "traces.jsonl"), *filter(None, extra)],
                   tokenizer=student_tok_dir,
                   topk=str(topk_path(out / "traces.jsonl")) if cfg.kd.weight > 0 else "")
    sft = replace(cfg.sft, kd_weight=cfg.kd.weight, kd_loss=cfg.kd.loss, kd_beta=cfg.kd.beta)
    return SFTConfig(model=student_model_section(cfg.student), data=data, sft=sft,
                     optim=cfg.optim, train=replace(cfg.train, out_dir=str(out / "sft")))


def _resume_arg(resume: bool, out_dir: Path) -> str | None:
    from nanoseek.train.state import latest_checkpoint

    return "latest" if resume and latest_checkpoint(out_dir / "checkpoints") else None


def publish(src: Path, dst: Path) -> None:
    """Copy model dir ``src`` to ``dst`` atomically (temporary copy, then rename)."""
    tmp, old = dst.with_name(f".{dst.name}.tmp"), dst.with_name(f".{dst.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        dst.replace(old)
    tmp.replace(dst)
    shutil.rmtree(old, ignore_errors=True)


def run_distill(cfg: DistillConfig, info: DistInfo | None = None, resume: bool = False,
                generator: Any = None) -> DistillResult:
    """All stages (module docstring). ``generator``: sample traces from this ``LLM``-shaped
    object instead of the teacher's engine (tests pass a scripted one)."""
    info = info or init_distributed(cfg.train.device)
    teacher_tok, student_tok, student_cfg, problems = check_config(cfg)
    out = Path(cfg.train.out_dir)
    if not resume and (out / "sft").exists():
        raise ValueError(f"train.out_dir: {out} already holds a distillation run (sft/); pass "
                         "--resume to continue it, or choose a new out_dir")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"teacher": cfg.teacher.path, "config": to_dict(cfg)}
    error, teacher = None, None
    if info.is_main:  # sampling and scoring write files: one process does them
        try:
            summary.update(teacher_stages(cfg, generator, student_tok, problems, out, info))
        except ValueError as e:
            error = e
    message = broadcast_object(str(error) if error else None)
    if message:
        raise error or ValueError(f"rank 0: {message}")
    if cfg.onpolicy.steps > 0:
        teacher = _teacher_model(cfg, None, info)
        summary["teacher_active_params"] = active_params(teacher.config)
    tok_dir = cfg.student.path if student_tok is not teacher_tok else cfg.teacher.path
    final = out / "sft" / "model"
    if not (resume and final.is_dir()):
        result = run_sft(sft_config(cfg, out, tok_dir), info, _resume_arg(resume, out / "sft"),
                         stage="distill")
        summary["sft"] = {"steps": result.state.step, "tokens": result.state.tokens,
                          "data": result.data}
    if cfg.onpolicy.steps > 0:
        on_out = out / "onpolicy"
        if not (resume and (on_out / "model").is_dir()):
            summary["onpolicy"] = run_onpolicy(cfg.onpolicy, final, teacher, student_tok,
                                               cfg.problems, cfg.optim, cfg.train, on_out,
                                               info, _resume_arg(resume, on_out))
        final = on_out / "model"
    summary["student_active_params"] = active_params(student_cfg)
    if info.is_main:
        from nanoseek.eval.run import write_json_atomic

        publish(final, out / "student")
        summary["student_dir"] = str(out / "student")
        write_json_atomic(out / "distill.json", summary)
    return DistillResult(out / "student", summary)


def _done(result: DistillResult) -> str:
    t = result.summary["traces"]
    return (f"{t['kept']} traces (pass rate {100 * t['pass_rate']:.1f}%) "
            f"-> student {result.student_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nanoseek distill``; returns the exit code."""
    parser = stage_parser(
        "nanoseek distill", "Distill a teacher into a dense Llama/Qwen2 student: verified "
        "traces, SFT (+ logit KD), optional on-policy distillation.",
        "teacher, problems, traces, student, kd, onpolicy, data, sft, optim, train",
        "--kd.weight 0.5", resume_checkpoint=False)
    return run_stage(parser, DistillConfig, run_distill, argv, done=_done)


if __name__ == "__main__":
    sys.exit(main())
