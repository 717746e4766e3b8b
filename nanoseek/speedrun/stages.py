"""The speedrun's stages: each calls the stage that already exists (tokenizer, data, pretrain,
SFT, GRPO, rejection sampling, distillation, eval, engine) in this process and returns a small
JSON summary for its marker. Layout of the run folder::

    corpus/      tasks.jsonl (worked solutions), text.jsonl (README + docstrings),
                 sft.jsonl (cold-start chats), grpo_tasks / sample_tasks / test_tasks.jsonl
    tokenizer/   byte-level BPE (HF tokenizer.json)
    data/        token shards (nanoseek data prepare)
    pretrain/    base model (pretrain/model), metrics, loss and expert-load plots
    sft/ grpo/   cold-start SFT and GRPO (sft/model, grpo/model)
    sample/      rejection-sampled traces of the GRPO model (traces.jsonl + stats)
    distill/     the dense student (distill/student) and its SFT run
    eval/        base.json, sft.json, rl.json, student.json: the same held-out problems
    speed.json   decode tokens/s with and without MTP speculative decoding
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanoseek.speedrun.presets import Preset

MODELS = {  # report name -> (model dir in the run folder, eval template)
    "base": ("pretrain/model", "plain"),
    "sft": ("sft/model", "chat"),
    "rl": ("grpo/model", "chat"),
    "student": ("distill/student", "chat"),
}


@dataclass
class Context:
    """What every stage gets: the preset, the run folder and this process's place in it."""

    preset: Preset
    run_dir: Path
    info: Any  # nanoseek.distributed.DistInfo

    def path(self, *parts: str) -> Path:
        return self.run_dir.joinpath(*parts)

    @property
    def device(self) -> str:
        return str(self.info.device)


# -------------------------------------------------------------------- helpers
def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write ``records`` as JSONL to a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, path)


def nest(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"train.steps": 5}`` → ``{"train": {"steps": 5}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def build_config(cls: type, dotted: dict[str, Any]) -> Any:
    """A stage config from dotted overrides (checked like ``--section.key value``)."""
    from nanoseek.train.config import from_dict

    return from_dict(cls, nest(dotted))


def run_settings(ctx: Context, out: str) -> dict[str, Any]:
    """Overrides every training stage shares: output folder, device, quiet trainer bars."""
    return {"train.out_dir": str(ctx.path(out)), "train.device": ctx.device,
            "train.progress": False}


def resume_arg(out_dir: Path) -> str | None:
    """``"latest"`` when an interrupted run left a checkpoint in ``out_dir``."""
    from nanoseek.train.state import latest_checkpoint

    return "latest" if latest_checkpoint(out_dir / "checkpoints") else None


def open_llm(ctx: Context, model_dir: Path, **engine_kwargs: Any) -> Any:
    """An ``LLM`` for ``model_dir`` on the run's device."""
    from nanoseek.infer import LLM

    device = ctx.info.device if ctx.info.device.type == "cuda" else None
    return LLM(model_dir, device=device, **engine_kwargs)


def distill_sft_dir(run_dir: Path) -> Path:
    """The student's SFT run folder (``distill/sft``, or the no-traces fallback's)."""
    fallback = run_dir / "distill" / "no_traces" / "sft"
    return fallback if fallback.is_dir() else run_dir / "distill" / "sft"


def final_record(path: Path, key: str) -> dict[str, Any]:
    """The last record of a metrics.jsonl that has ``key``."""
    from nanoseek.train.metrics import read_jsonl

    rows = [r for r in read_jsonl(path) if key in r]
    return rows[-1] if rows else {}


# -------------------------------------------------------------------- corpus, tokenizer, data
def repo_text() -> list[str]:
    """Plain-text documents that ship with the repository: README paragraphs and the module
    docstrings of the ``nanoseek`` package (no download)."""
    import nanoseek

    package = Path(nanoseek.__file__).parent
    texts = []
    readme = package.parent / "README.md"
    if readme.is_file():
        texts.append(readme.read_text(encoding="utf-8"))
    for path in sorted(package.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        if doc:
            texts.append(doc)
    paragraphs = [p.strip() for t in texts for p in t.split("\n\n")]
    return [p for p in paragraphs if len(p) >= 40]


def stage_corpus(ctx: Context) -> dict[str, Any]:
    """Task documents with worked ``<think>`` solutions (train split), repository text, the
    cold-start SFT chats and the task files of the later stages (held-out test split)."""
    from nanoseek.chat_template import EOS_TOKEN, render_text
    from nanoseek.data.tasks import CHAT_INSTRUCTION, chat_messages, distinct_problems, get_task

    p, out = ctx.preset, ctx.path("corpus")
    docs, rng, slipped = [], random.Random(0), 0
    for i, (task, kwargs, n) in enumerate(p.corpus):
        for q in get_task(task)(n, seed=1000 + i, **kwargs):
            slipped += bool(q.meta.get("slipped"))
            if rng.random() < p.chat_fraction:  # ends with EOS; the loader adds the BOS
                docs.append(render_text(chat_messages(q, with_solution=True), bos_token=""))
            else:
                docs.append(q.text() + EOS_TOKEN)
    rng.shuffle(docs)
    text = repo_text() if p.text_sources else []
    make = get_task(p.task)
    sft = make(p.sft_problems, seed=1, **p.task_args)
    files = {"grpo_tasks": make(p.grpo_problems, seed=2, **p.task_args),
             "sample_tasks": make(p.sample_problems, seed=3, **p.task_args),
             "test_tasks": distinct_problems(p.task, p.eval_problems, seed=0, split="test",
                                             **p.task_args)}
    write_jsonl(out / "tasks.jsonl", [{"text": d} for d in docs])
    write_jsonl(out / "text.jsonl", [{"text": t} for t in text])
    write_jsonl(out / "sft.jsonl", [{"messages": chat_messages(q, with_solution=True)}
                                    for q in sft])
    write_jsonl(out / "chat_text.jsonl", [{"text": f"{q.prompt}\n{CHAT_INSTRUCTION}"}
                                          for q in sft[:500]])
    for name, problems in files.items():
        write_jsonl(out / f"{name}.jsonl", [q.to_record() for q in problems])
    return {"task_documents": len(docs), "text_documents": len(text),
            "characters": sum(map(len, docs)) + sum(map(len, text)), "sft_chats": len(sft),
            "task_documents_slipped": slipped,
            "sft_chats_slipped": sum(bool(q.meta.get("slipped")) for q in sft),
            **{name: len(v) for name, v in files.items()}}


def stage_tokenizer(ctx: Context) -> dict[str, Any]:
    """A byte-level BPE with DeepSeek's special tokens, trained on the corpus."""
    from nanoseek.tokenizer import train_tokenizer

    corpus = ctx.path("corpus")
    files = [corpus / n for n in ("tasks.jsonl", "text.jsonl", "chat_text.jsonl")]
    tok = train_tokenizer([f for f in files if f.stat().st_size], ctx.preset.vocab_size)
    out, tmp = ctx.path("tokenizer"), ctx.path(".tokenizer.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"vocab_size": tok.vocab_size}


def stage_data(ctx: Context) -> dict[str, Any]:
    """Token shards of the pretraining corpus (``nanoseek data prepare``)."""
    from nanoseek.data.prepare import prepare

    corpus = ctx.path("corpus")
    inputs = [f for f in (corpus / "tasks.jsonl", corpus / "text.jsonl") if f.stat().st_size]
    m = prepare(inputs, ctx.path("data"), ctx.path("tokenizer"), val_fraction=0.01)
    return {s: {"documents": m.splits[s].documents, "tokens": m.splits[s].tokens}
            for s in m.splits}


# -------------------------------------------------------------------- training stages
def stage_pretrain(ctx: Context) -> dict[str, Any]:
    """Pretrain the tiny DeepSeek-V3 (MLA, MoE with bias balancing, MTP) from scratch."""
    from nanoseek.train.pretrain import PretrainConfig, run_pretrain

    cfg = build_config(PretrainConfig, {**ctx.preset.pretrain, **run_settings(ctx, "pretrain"),
                                        "data.dir": str(ctx.path("data"))})
    state = run_pretrain(cfg, ctx.info, resume_arg(ctx.path("pretrain")))
    metrics = ctx.path("pretrain", "metrics.jsonl")
    return {"steps": state.step, "tokens": state.tokens,
            "loss": final_record(metrics, "loss").get("loss"),
            "val_loss": final_record(metrics, "val_loss").get("val_loss")}


def stage_sft(ctx: Context) -> dict[str, Any]:
    """Cold-start SFT of the base model on worked solutions in the R1 chat format."""
    from nanoseek.train.sft import SFTConfig, run_sft

    cfg = build_config(SFTConfig, {**ctx.preset.sft, **run_settings(ctx, "sft"),
                                   "model.path": str(ctx.path("pretrain", "model")),
                                   "data.train": str(ctx.path("corpus", "sft.jsonl"))})
    result = run_sft(cfg, ctx.info, resume_arg(ctx.path("sft")))
    return {"steps": result.state.step, "tokens": result.state.tokens,
            "loss": final_record(ctx.path("sft", "metrics.jsonl"), "loss").get("loss")}


def grpo_overrides(ctx: Context) -> dict[str, Any]:
    """The GRPO config: rule rewards on the task's train pool, eval on the held-out file."""
    return {**ctx.preset.grpo, **run_settings(ctx, "grpo"),
            "model.path": str(ctx.path("sft", "model")), "data.template": "chat",
            "data.tasks": [str(ctx.path("corpus", "grpo_tasks.jsonl"))],
            "data.eval_tasks": [str(ctx.path("corpus", "test_tasks.jsonl"))],
            "reward.workers": ctx.preset.reward_workers}


def stage_grpo(ctx: Context) -> dict[str, Any]:
    """GRPO (the R1 recipe) from the SFT model, with held-out evaluation along the way."""
    from nanoseek.rl.grpo import GRPOConfig, run_grpo

    cfg = build_config(GRPOConfig, grpo_overrides(ctx))
    state = run_grpo(cfg, ctx.info, resume_arg(ctx.path("grpo")))
    metrics = ctx.path("grpo", "metrics.jsonl")
    return {"steps": state.step, "reward": final_record(metrics, "reward").get("reward"),
            "eval_greedy": final_record(metrics, "eval_greedy").get("eval_greedy")}


def sample_settings(ctx: Context) -> dict[str, Any]:
    """Rejection-sampling settings shared by the sample and distill stages."""
    s = {"samples": 4, "max_tokens": 128, "temperature": 0.8, "top_p": 0.95, "keep": "all",
         "batch_size": 64, **ctx.preset.sample}
    return {**s, "reward_workers": ctx.preset.reward_workers}


def stage_sample(ctx: Context) -> dict[str, Any]:
    """Rejection sampling: k samples per train problem from the GRPO model, keep verified."""
    from nanoseek.data.tasks import load_task_file
    from nanoseek.rl.sample import rejection_sample

    s = sample_settings(ctx)
    problems = load_task_file(ctx.path("corpus", "sample_tasks.jsonl"))
    stats = rejection_sample(open_llm(ctx, ctx.path("grpo", "model")), problems, s["samples"],
                             ctx.path("sample", "traces.jsonl"), max_tokens=s["max_tokens"],
                             temperature=s["temperature"], top_p=s["top_p"], seed=0,
                             template="chat", keep=s["keep"], batch_size=s["batch_size"],
                             reward_workers=s["reward_workers"])
    d = stats.to_dict()
    return {k: d[k] for k in ("prompts", "samples", "verified", "kept", "pass_rate")}


def distill_config(ctx: Context) -> Any:
    """The distill config: the GRPO model teaches, on the sample stage's problems."""
    from nanoseek.distill.run import DistillConfig

    n = sum(1 for _ in ctx.path("corpus", "sample_tasks.jsonl").open())
    return build_config(DistillConfig, {
        **ctx.preset.distill, **run_settings(ctx, "distill"),
        "teacher.path": str(ctx.path("grpo", "model")),
        "problems.task": str(ctx.path("corpus", "sample_tasks.jsonl")),
        "problems.num_problems": n,
        **{f"traces.{k}": v for k, v in sample_settings(ctx).items()}})


def stage_distill(ctx: Context) -> dict[str, Any]:
    """Distil the GRPO model's verified traces (+ top-k logits) into a dense student."""
    from nanoseek.distill.run import run_distill
    from nanoseek.rl.sample import progress_path, stats_path

    out, cfg = ctx.path("distill"), distill_config(ctx)
    src, dst = ctx.path("sample", "traces.jsonl"), out / "traces.jsonl"
    if json.loads(stats_path(src).read_text())["kept"] == 0:
        return distill_without_traces(ctx, cfg)
    if not dst.is_file():  # reuse the sample stage's traces: distill resumes, samples nothing
        out.mkdir(parents=True, exist_ok=True)
        for a, b in ((stats_path(src), stats_path(dst)), (progress_path(src), progress_path(dst)),
                     (src, dst)):
            shutil.copyfile(a, b)
    teacher = ctx.path("grpo", "model")
    result = run_distill(cfg, ctx.info, resume=True, generator=open_llm(ctx, teacher))
    sft = result.summary.get("sft", {})
    return {"student_dir": str(result.student_dir), "steps": sft.get("steps"),
            "data": "verified teacher traces",
            "student_active_params": result.summary.get("student_active_params")}


def distill_without_traces(ctx: Context, cfg: Any) -> dict[str, Any]:
    """The teacher verified no trace (a model too small to solve anything, as in the ``ci``
    preset): the student learns the cold-start SFT conversations with logit KD against the
    teacher's top-k on them instead. Single process only; the report says which data it was."""
    from dataclasses import replace

    from nanoseek.checkpoint import load_pretrained
    from nanoseek.distill.run import publish, sft_config
    from nanoseek.distill.traces import score_traces, topk_path
    from nanoseek.tokenizer import Tokenizer
    from nanoseek.train.sft import run_sft
    from nanoseek.train.sft_data import read_chat_jsonl

    if ctx.info.world_size > 1:
        raise ValueError("rejection sampling kept no traces: nothing to distil; run a bigger "
                         "preset (the fallback on the SFT data runs in one process only)")
    work, teacher = ctx.path("distill", "no_traces"), ctx.path("grpo", "model")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.path("corpus", "sft.jsonl"), work / "traces.jsonl")
    tok = Tokenizer.from_pretrained(teacher)
    score_traces(load_pretrained(teacher).to(ctx.info.device), tok,
                 read_chat_jsonl(work / "traces.jsonl"), topk_path(work / "traces.jsonl"),
                 cfg.kd.top_k, teacher_name=str(teacher))
    cfg = replace(cfg, kd=replace(cfg.kd, weight=cfg.kd.weight or 0.5))
    result = run_sft(sft_config(cfg, work, str(teacher)), ctx.info,
                     resume_arg(work / "sft"), stage="distill")
    publish(result.model_dir, ctx.path("distill", "student"))
    return {"student_dir": str(ctx.path("distill", "student")), "steps": result.state.step,
            "data": "cold-start SFT chats + teacher top-k (no verified teacher traces)"}


# -------------------------------------------------------------------- evaluation and speed
def stage_eval(ctx: Context) -> dict[str, Any]:
    """Every model on the same held-out problems (base with the plain template, the chat
    models with the R1 chat template); one JSON per model, skipped when already there."""
    from nanoseek.data.tasks import load_task_file
    from nanoseek.eval.run import evaluate, write_json_atomic

    p = ctx.preset
    problems = load_task_file(ctx.path("corpus", "test_tasks.jsonl"))
    summary = {}
    for name, (model_dir, template) in MODELS.items():
        out = ctx.path("eval", f"{name}.json")
        if not out.is_file():
            result = evaluate(open_llm(ctx, ctx.path(model_dir)), problems, p.eval_samples,
                              max_tokens=p.eval_max_tokens, template=template, seed=0,
                              reward_workers=p.reward_workers, task=p.task)
            result.config["model"] = model_dir
            write_json_atomic(out, result.to_dict(completions=True))
        metrics = json.loads(out.read_text())["metrics"]
        summary[name] = {k: metrics.get(k) for k in ("greedy", "pass@1")}
    return summary


def decode_rate(llm: Any, prompts: list[list[int]], max_tokens: int, batch: bool = False,
                rounds: int = 3) -> dict[str, Any]:
    """Greedy decode tokens/s of ``prompts`` (``max_tokens`` each, EOS ignored), one request
    at a time or all at once (``batch``): the median of ``rounds`` timed rounds after a
    warm-up, and the MTP draft statistics of the timed rounds when the engine speculates."""
    import statistics

    from nanoseek.infer import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate(prompts[:1], params)  # warm-up
    before, rates, tokens = llm.engine.stats(), [], 0
    for _ in range(rounds):
        start, n = time.perf_counter(), 0
        for group in [prompts] if batch else [[q] for q in prompts]:
            n += sum(len(o.outputs[0].token_ids) for o in llm.generate(group, params))
        rates.append(n / (time.perf_counter() - start))
        tokens += n
    out: dict[str, Any] = {"tokens_per_s": statistics.median(rates), "rounds": rates,
                           "tokens": tokens}
    after = llm.engine.stats()
    drafts = after.get("spec_drafts", 0) - before.get("spec_drafts", 0)
    if drafts:
        out["spec_acceptance_rate"] = (after["spec_accepted"] - before["spec_accepted"]) / drafts
    return out


def stage_speed(ctx: Context) -> dict[str, Any]:
    """Decode speed: the MoE teacher (GRPO model) with and without MTP speculative decoding
    (and its draft acceptance rate), the dense student; batch 1 and batched."""
    from nanoseek.data.tasks import load_task_file
    from nanoseek.eval.run import build_prompts, write_json_atomic

    s = ctx.preset.speed
    problems = load_task_file(ctx.path("corpus", "test_tasks.jsonl"))
    out: dict[str, Any] = {"max_tokens": s["max_tokens"], "prompts": s["prompts"],
                           "batch_prompts": s["batch_prompts"], "rounds": 3}
    runs: list[tuple[str, str, dict[str, Any]]] = [
        ("teacher", "grpo/model", {}),
        ("teacher_mtp", "grpo/model", {"num_speculative_tokens": 1}),
        ("student", "distill/student", {})]
    for name, model_dir, kwargs in runs:
        llm = open_llm(ctx, ctx.path(model_dir), **kwargs)
        prompts = build_prompts(problems, "chat", llm.tokenizer)
        prompts = (prompts * (1 + s["batch_prompts"] // len(prompts)))[: s["batch_prompts"]]
        row = {"model": model_dir, **decode_rate(llm, prompts[: s["prompts"]], s["max_tokens"])}
        if not kwargs:
            row["batched"] = decode_rate(llm, prompts, s["max_tokens"], batch=True)
        out[name] = row
    write_json_atomic(ctx.path("speed.json"), out)
    return {name: round(out[name]["tokens_per_s"], 1) for name, _, _ in runs}


def stage_report(ctx: Context) -> dict[str, Any]:
    """report.md and the PNG plots beside it."""
    from nanoseek.speedrun.report import write_report

    path = write_report(ctx.run_dir, ctx.preset)
    return {"report": str(path)}


STAGE_FUNCS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "corpus": stage_corpus, "tokenizer": stage_tokenizer, "data": stage_data,
    "pretrain": stage_pretrain, "sft": stage_sft, "grpo": stage_grpo, "sample": stage_sample,
    "distill": stage_distill, "eval": stage_eval, "speed": stage_speed, "report": stage_report,
}
OUTPUTS: dict[str, tuple[str, ...]] = {  # what a from-scratch rerun of the stage removes
    "corpus": ("corpus",), "tokenizer": ("tokenizer",), "data": ("data",),
    "pretrain": ("pretrain",), "sft": ("sft",), "grpo": ("grpo",), "sample": ("sample",),
    "distill": ("distill",), "eval": ("eval",), "speed": ("speed.json",), "report": (),
}
ALL_RANKS = frozenset({"pretrain", "sft", "grpo", "distill"})
"""Stages every torchrun rank runs (the others run on rank 0 while the rest wait)."""
