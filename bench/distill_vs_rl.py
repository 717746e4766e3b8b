"""Distillation vs RL on the small model (DeepSeek-R1 §4.1, Table 6) at toy scale.

DeepSeek found that distilling R1 into Qwen-32B beat running large-scale RL on Qwen-32B itself.
Here, from one small dense base student (Qwen2 architecture, cold-started by SFT on a few
worked solutions, R1 chat format with a ``<think>`` block):

* **(a) RL**: GRPO directly on the task (``nanoseek.rl.grpo.run_grpo``, accuracy + format
  rewards), from the base student;
* **(b) distillation**: ``nanoseek.distill.run_distill`` from a GRPO-trained teacher (a larger
  model, dense by default or a DeepSeek-V3-shaped MoE with ``--teacher-arch moe``: cold-start
  SFT on more data, then GRPO): verified teacher traces
  (rejection sampling), then SFT of the same base student, with as many student-side training
  FLOPs as (a) used (rollout generation 2·N·tokens + updates 6·N·tokens; the SFT step count is
  derived from (a)'s measured token counts). The teacher's own training and its trace sampling
  are reported separately, as the paper does (R1's cost is not charged to the distilled models).

Reported: held-out pass@1 (mean correctness of ``--samples`` samples at T = 0.6, top-p 0.95,
R1's protocol) and greedy accuracy on the task's test split for the teacher, the base student,
(a) and (b); active parameters; student-side compute; and decode speed (tokens/s, greedy, the
nanoseek engine, batch 1 and batch 32) of the student vs the teacher. Goal: (b) ≥ (a), and (b)
keeps ≥ 80 % of the teacher's pass@1 at a fraction of its active parameters.

    python bench/distill_vs_rl.py                      # arithmetic, seed 0
    python bench/distill_vs_rl.py --seeds 0 1 --grpo-steps 60   # a smaller budget

Prints a markdown table and one JSON object. Work files go to ``--work`` (a temporary folder by
default).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class Setting:
    """Sizes, data and step counts of one run."""

    difficulty: int = 2
    ops: str = "+"
    vocab: int = 300
    max_new_tokens: int = 72
    student_hidden: int = 64
    student_layers: int = 3
    teacher_arch: str = "dense"
    teacher_hidden: int = 128
    teacher_layers: int = 4
    base_examples: int = 500
    base_steps: int = 150
    teacher_examples: int = 8000
    teacher_sft_steps: int = 600
    teacher_grpo_steps: int = 10
    grpo_steps: int = 150  # also the distillation budget: 60 gave (b) 50.5%, 150 gave 97.5%
    grpo_prompts: int = 8
    grpo_group: int = 8
    grpo_lr: float = 1e-4
    sft_lr: float = 3e-3
    distill_lr: float = 1e-3
    distill_problems: int = 600
    distill_samples: int = 2
    seq_len: int = 256
    eval_problems: int = 100
    samples: int = 2


# -------------------------------------------------------------------- data
def problems(s: Setting, n: int, seed: int, split: str) -> list[Any]:
    from nanoseek.data.tasks import arithmetic

    return arithmetic(n, seed=seed, difficulty=s.difficulty, split=split, ops=s.ops)


def write_tasks(items: list[Any], path: Path) -> Path:
    path.write_text("".join(json.dumps(p.to_record()) + "\n" for p in items))
    return path


def write_chat(items: list[Any], path: Path) -> Path:
    """Worked solutions as SFT chat JSONL (what ``nanoseek sample`` writes)."""
    from nanoseek.data.tasks import chat_messages
    from nanoseek.rl.sample import split_completion

    lines = []
    for p in items:
        reasoning, answer = split_completion(p.solution, False)
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": chat_messages(p)[0]["content"]},
            {"role": "assistant", "content": answer, "reasoning_content": reasoning}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


# -------------------------------------------------------------------- stages
def overrides(values: dict[str, Any]) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k}", json.dumps(v))]


def fresh_dir(config: Any, tokenizer: Any, path: Path, seed: int) -> Path:
    """A fresh model of ``config`` saved with the tokenizer (std 0.02)."""
    from nanoseek.checkpoint import save_pretrained
    from nanoseek.model import build_model

    torch.manual_seed(seed)
    model = build_model(config.replace(vocab_size=tokenizer.vocab_size,
                                       bos_token_id=tokenizer.bos_id,
                                       eos_token_id=tokenizer.eos_id))
    model.init_weights(0.02)
    save_pretrained(model, path)
    tokenizer.save_pretrained(path)
    return path


def sft(model_dir: Path, data: Path, steps: int, lr: float, out: Path, s: Setting,
        seed: int) -> Path:
    from nanoseek.train.config import load_config
    from nanoseek.train.sft import SFTConfig, run_sft

    if (out / "model").is_dir():  # done in an earlier run with the same settings (--work)
        return out / "model"
    cfg = load_config(SFTConfig, None, overrides({
        "model.path": str(model_dir), "data.train": str(data), "train.out_dir": str(out),
        "train.steps": steps, "train.seq_len": s.seq_len, "train.micro_batch": 8,
        "train.seed": seed, "train.precision": "fp32", "train.progress": False,
        "train.log_every": max(steps, 1), "train.device": "cpu", "train.peak_tflops": 1.0,
        "optim.lr": lr, "optim.warmup_steps": min(20, steps // 5)}))
    return run_sft(cfg).model_dir


def grpo(model_dir: Path, train_file: Path, steps: int, s: Setting, out: Path,
         seed: int) -> tuple[Path, list[dict[str, Any]]]:
    from nanoseek.distributed import DistInfo
    from nanoseek.rl.grpo import GRPOConfig, run_grpo
    from nanoseek.train.config import load_config

    cfg = load_config(GRPOConfig, None, overrides({
        "model.path": str(model_dir), "data.tasks": [str(train_file)],
        "data.template": "chat", "grpo.group_size": s.grpo_group,
        "grpo.prompts_per_step": s.grpo_prompts, "grpo.max_new_tokens": s.max_new_tokens,
        "grpo.beta": 0.0, "grpo.loss_type": "dapo", "reward.names": ["accuracy", "format"],
        "reward.workers": 0, "optim.lr": s.grpo_lr, "train.out_dir": str(out),
        "train.steps": steps, "train.micro_batch": 64, "train.seed": seed,
        "train.precision": "fp32", "train.progress": False, "train.log_every": 1,
        "train.device": "cpu"}))
    if not (out / "model").is_dir():
        run_grpo(cfg, DistInfo())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return out / "model", [m for m in metrics if "reward" in m]


def grpo_flops(curve: list[dict[str, Any]], prompt_tokens: float, s: Setting,
               active: int) -> float:
    """Student-side FLOPs of GRPO: generation (prefill + decode, 2·N per token) and one update
    pass (forward + backward, 6·N per token) over every sampled sequence."""
    seqs, tokens, prev = s.grpo_prompts * s.grpo_group, 0.0, 0
    for r in curve:  # a logged step stands for the unlogged ones before it
        tokens += (r["step"] - prev) * seqs * (prompt_tokens + r["length_mean"])
        prev = r["step"]
    return 8.0 * active * tokens


def distill(teacher: Path, base: Path, train_file: Path, sft_steps: int, s: Setting, out: Path,
            seed: int) -> tuple[Path, dict[str, Any]]:
    from nanoseek.distill.run import DistillConfig, run_distill
    from nanoseek.train.config import load_config

    cfg = load_config(DistillConfig, None, overrides({
        "teacher.path": str(teacher), "problems.task": str(train_file),
        "problems.num_problems": s.distill_problems, "problems.seed": seed,
        "traces.samples": s.distill_samples, "traces.max_tokens": s.max_new_tokens,
        "traces.keep": "shortest", "traces.reward_workers": 0, "traces.batch_size": 64,
        "student.path": str(base), "train.out_dir": str(out), "train.steps": sft_steps,
        "train.seq_len": s.seq_len, "train.micro_batch": 8, "train.seed": seed,
        "train.precision": "fp32", "train.progress": False, "train.peak_tflops": 1.0,
        "train.log_every": max(sft_steps, 1), "train.device": "cpu",
        "optim.lr": s.distill_lr, "optim.warmup_steps": min(20, sft_steps // 5)}))
    if (out / "student").is_dir():
        return out / "student", json.loads((out / "distill.json").read_text())
    result = run_distill(cfg)
    return result.student_dir, result.summary


def evaluate(model_dir: Path, test: list[Any], s: Setting) -> dict[str, float]:
    from nanoseek.eval.run import evaluate as run_eval
    from nanoseek.infer import LLM

    m = run_eval(LLM(model_dir), test, samples=s.samples, max_tokens=s.max_new_tokens,
                 template="chat", greedy=True, reward_workers=0).metrics
    return {"pass@1": m["pass@1"], "greedy": m["greedy"], "format": m["format_rate"],
            "tokens": m["mean_response_tokens"]}


def decode_speed(model_dir: Path, test: list[Any], batch: int, tokens: int = 64) -> float:
    """Generated tokens per second (greedy, ``tokens`` each, ``batch`` prompts at once; the
    best of three runs)."""
    from nanoseek.data.tasks import chat_messages
    from nanoseek.infer import LLM, SamplingParams

    llm = LLM(model_dir)
    prompts = [llm.chat_prompt(chat_messages(p)) for p in test[:batch]]
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    llm.generate(prompts[:1], SamplingParams(temperature=0.0, max_tokens=4))  # warm up
    best = 0.0
    for _ in range(3):  # best of three: the machine may be shared
        t0 = time.perf_counter()
        out = llm.generate(prompts, params)
        n = sum(len(o.outputs[0].token_ids) for o in out)
        best = max(best, n / (time.perf_counter() - t0))
    return best


# -------------------------------------------------------------------- one seed
def models(s: Setting) -> tuple[Any, Any]:
    from nanoseek.config import get_preset

    student = get_preset("tiny-qwen2").replace(hidden_size=s.student_hidden,
                                               num_hidden_layers=s.student_layers)
    if s.teacher_arch == "moe":  # DeepSeek-V3-shaped: MLA + routed experts
        teacher = get_preset("tiny").replace(
            hidden_size=s.teacher_hidden, num_hidden_layers=s.teacher_layers,
            intermediate_size=4 * s.teacher_hidden, moe_intermediate_size=s.teacher_hidden // 2,
            num_nextn_predict_layers=0)
    else:
        teacher = student.replace(hidden_size=s.teacher_hidden,
                                  num_hidden_layers=s.teacher_layers,
                                  intermediate_size=s.teacher_hidden * 5 // 2)
    return student, teacher


def key(s: Setting, *names: str) -> str:
    """A short hash of some settings: stage folders under ``--work`` are reused only when
    every setting they depend on is the same."""
    values = json.dumps({n: getattr(s, n) for n in names}, sort_keys=True)
    return hashlib.sha256(values.encode()).hexdigest()[:8]


DATA_KEYS = ("difficulty", "ops", "vocab", "seq_len")
GRPO_KEYS = ("grpo_prompts", "grpo_group", "grpo_lr", "max_new_tokens")
TEACHER_KEYS = (*DATA_KEYS, *GRPO_KEYS, "teacher_arch", "teacher_hidden", "teacher_layers",
                "teacher_examples", "teacher_sft_steps", "teacher_grpo_steps", "sft_lr")
BASE_KEYS = (*DATA_KEYS, "student_hidden", "student_layers", "base_examples", "base_steps",
             "sft_lr")


def one_seed(s: Setting, seed: int, work: Path) -> dict[str, Any]:
    from nanoseek.cost import closed_form_params
    from nanoseek.data.tasks import chat_messages
    from nanoseek.tokenizer import Tokenizer, train_tokenizer

    root = work / f"seed{seed}-{key(s, *DATA_KEYS)}"
    root.mkdir(parents=True, exist_ok=True)
    train, test = problems(s, 20000, seed, "train"), problems(s, s.eval_problems, seed, "test")
    corpus = [chat_messages(p)[0]["content"] + "\n" + p.solution for p in train[:5000]]
    if not (root / "tok" / "tokenizer.json").is_file():
        (root / "corpus.txt").write_text("\n\n".join(corpus))
        train_tokenizer([root / "corpus.txt"], vocab_size=s.vocab).save_pretrained(root / "tok")
    tok = Tokenizer.from_pretrained(root / "tok")
    train_file = write_tasks(train, root / "train.jsonl")
    student_cfg, teacher_cfg = models(s)
    times: dict[str, float] = {}

    def timed(name: str, fn: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args)
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"[distill_vs_rl] seed {seed}: {name} done in {times[name]} s"
              + (f": {out}" if isinstance(out, dict) else ""), file=sys.stderr, flush=True)
        return out

    # teacher: cold start on many worked solutions, then GRPO
    t_dir, b_dir = root / f"teacher-{key(s, *TEACHER_KEYS)}", root / f"base-{key(s, *BASE_KEYS)}"
    t_dir.mkdir(exist_ok=True)
    b_dir.mkdir(exist_ok=True)
    t_init = fresh_dir(teacher_cfg, tok, t_dir / "init", seed)
    t_sft = timed("teacher_sft", sft, t_init,
                  write_chat(train[:s.teacher_examples], t_dir / "sft.jsonl"),
                  s.teacher_sft_steps, s.sft_lr, t_dir / "sft", s, seed)
    teacher, _ = timed("teacher_grpo", grpo, t_sft, train_file, s.teacher_grpo_steps, s,
                       t_dir / "grpo", seed)
    # the base student: cold start on a few worked solutions
    s_init = fresh_dir(student_cfg, tok, b_dir / "init", seed)
    base = timed("base_sft", sft, s_init, write_chat(train[-s.base_examples:],
                                                      b_dir / "sft.jsonl"),
                 s.base_steps, s.sft_lr, b_dir / "sft", s, seed)
    n_student = closed_form_params(load_cfg(base)).active
    n_teacher = closed_form_params(load_cfg(teacher)).active
    # (a) GRPO on the student
    rl_dir, curve = timed("grpo", grpo, base, train_file, s.grpo_steps, s,
                          b_dir / f"rl-{key(s, *GRPO_KEYS, 'grpo_steps')}", seed)
    prompt_tokens = statistics.mean(len(tok.render_chat(chat_messages(p),
                                                        add_generation_prompt=True).ids)
                                    for p in train[:200])
    flops_a = grpo_flops(curve, prompt_tokens, s, n_student)
    # (b) distillation with the same student-side FLOPs
    sft_steps = max(1, round(flops_a / (6.0 * n_student * 8 * s.seq_len)))
    d_key = key(s, *TEACHER_KEYS, "distill_lr", "distill_problems", "distill_samples")
    distill_dir, summary = timed("distill", distill, teacher, base, train_file, sft_steps, s,
                                 b_dir / f"distill-{d_key}-{sft_steps}", seed)
    flops_b = 6.0 * n_student * summary["sft"]["tokens"]
    trace_tokens = summary["traces"]["generated_tokens"]
    evals = {name: timed(f"eval_{name}", evaluate, path, test, s) for name, path in
             (("teacher", teacher), ("teacher_before_grpo", t_sft), ("base", base),
              ("rl", rl_dir), ("distill", distill_dir))}
    speed = {f"{who}_b{b}": round(decode_speed(path, test, b), 1)
             for who, path in (("teacher", teacher), ("student", distill_dir)) for b in (1, 32)}
    return {"seed": seed, "eval": evals, "active_params": {"teacher": n_teacher,
                                                          "student": n_student},
            "compute": {"rl_student_flops": flops_a, "distill_student_flops": flops_b,
                        "distill_sft_steps": sft_steps, "rl_steps": s.grpo_steps,
                        "teacher_trace_flops": 2.0 * n_teacher * trace_tokens,
                        "traces_kept": summary["traces"]["kept"],
                        "teacher_pass_rate_on_train": summary["traces"]["pass_rate"]},
            "decode_tokens_per_s": speed, "seconds": times,
            "rl_curve": [{k: r[k] for k in ("step", "reward", "pass_rate", "length_mean")}
                         for r in curve]}


def load_cfg(path: Path) -> Any:
    from nanoseek.checkpoint import read_config

    return read_config(path)[0]


# -------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    lines = ["### Distillation vs RL on the small model (held-out, arithmetic)", "",
             "| seed | teacher p@1 | base p@1 | (a) GRPO p@1 | (b) distill p@1 | (b)/teacher | "
             "greedy T / base / a / b | active T / S | student FLOPs a / b | decode tok/s "
             "S vs T (b1, b32) |", "|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        e, c, p, d = r["eval"], r["compute"], r["active_params"], r["decode_tokens_per_s"]
        ratio = e["distill"]["pass@1"] / max(e["teacher"]["pass@1"], 1e-9)
        greedy = " / ".join(f"{100 * e[k]['greedy']:.0f}%" for k in
                            ("teacher", "base", "rl", "distill"))
        lines.append(
            f"| {r['seed']} | {100 * e['teacher']['pass@1']:.1f}% | "
            f"{100 * e['base']['pass@1']:.1f}% | {100 * e['rl']['pass@1']:.1f}% | "
            f"{100 * e['distill']['pass@1']:.1f}% | {100 * ratio:.0f}% | {greedy} | "
            f"{p['teacher'] / 1e3:.0f}K / {p['student'] / 1e3:.0f}K | "
            f"{c['rl_student_flops']:.2e} / {c['distill_student_flops']:.2e} | "
            f"{d['student_b1']:.0f} vs {d['teacher_b1']:.0f}, {d['student_b32']:.0f} vs "
            f"{d['teacher_b32']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=None)
    for name, value in asdict(Setting()).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Setting(**{k: getattr(args, k) for k in asdict(Setting())})
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = [one_seed(s, seed, work) for seed in args.seeds]
    print(table(rows))
    pass1 = {k: statistics.mean(r["eval"][k]["pass@1"] for r in rows)
             for k in ("teacher", "base", "rl", "distill")}
    summary = {"setting": asdict(s), "seeds": rows, "mean_pass@1": pass1,
               "distill_ge_rl": pass1["distill"] >= pass1["rl"],
               "distill_keeps_80pct_of_teacher": pass1["distill"] >= 0.8 * pass1["teacher"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
