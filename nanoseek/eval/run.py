"""``nanoseek eval``: pass@1, pass@k, maj@k and greedy accuracy of a model on a verifiable task.

    nanoseek eval --model out/r1 --task arithmetic --num-problems 200 --samples 8
    nanoseek eval --model out/r1 --task gsm8k_test.jsonl --template plain --out eval.json

R1's protocol (paper §3): ``--samples`` k completions per problem at temperature 0.6, top-p
0.95; pass@1 is their mean correctness, pass@k the unbiased estimator, maj@k the majority vote
over normalized answers (see ``nanoseek.eval.metrics``). One more greedy completion per problem
gives the greedy accuracy (``--no-greedy`` skips it). All prompts and samples go to the engine in
one ``generate`` call (``n=k`` per prompt), so it batches them. Answers are scored by the
``accuracy`` and ``format`` rewards of ``nanoseek.rl.rewards`` in worker processes with a
timeout: a checker that raises or hangs scores 0 and is counted.

Prompt templates (``--template``): ``chat`` renders the R1 chat template with R1's math
instruction and prefills ``<think>\\n``; ``plain`` (``{prompt}\\n``) and ``r1_zero`` (the
R1-Zero template) are text, with a BOS first when the tokenizer has one, as pretraining
documents do; ``--think-prefilled`` / ``--no-think-prefilled`` override the prefill. Prompts
that do not fit the context are skipped and counted. Prints a markdown table (``--json``: one
JSON object); ``--out`` writes the full result with every completion as JSON.

In Python, ``evaluate(llm_or_model_dir, problems, samples=k, ...) -> EvalResult`` takes an
``LLM``, a model directory, or any object with ``LLM.generate``'s shape (tests pass a scripted
one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nanoseek.data.tasks import (
    TASKS,
    Problem,
    chat_messages,
    distinct_problems,
    get_task,
    load_task_file,
    render_prompt,
)
from nanoseek.eval.metrics import ProblemRecord, aggregate, answer_key
from nanoseek.rl.rewards import RewardSet, extract_answer

TEMPLATES = ("plain", "r1_zero", "chat")
DEFAULT_NUM_PROBLEMS = 100
Prompt = str | list[int]


class Generator(Protocol):
    """What ``evaluate`` needs from an engine: ``nanoseek.infer.LLM.generate``'s shape.

    ``generate(prompts, params)`` takes text or token-id prompts and one ``SamplingParams`` per
    prompt, and returns one output per prompt, in order, whose ``.outputs`` (``params.n`` of
    them) have ``.text``, ``.token_ids`` and ``.finish_reason``. An optional ``.tokenizer``
    (needed for ``template="chat"``) and ``.engine.max_model_len`` (for the context check)
    are used when present."""

    def generate(self, prompts: list[Prompt], sampling_params: list[Any]) -> list[Any]: ...


@dataclass
class Completion:
    """One generated sample: its text, token count and why it stopped."""

    text: str
    num_tokens: int
    finish_reason: str | None


# ---------------------------------------------------------------------------------------------
# pieces shared with the rejection-sampling stage (nanoseek.rl.sample)


def load_generator(model: str | Path | Generator, dtype: str | None = None,
                   **engine_kwargs: Any) -> Generator:
    """An ``LLM`` for a model directory; any object with a ``generate`` method as it is."""
    if isinstance(model, str | Path):
        if not Path(model).is_dir():
            raise ValueError(f"--model {model}: not a directory (expected a HF-format model dir)")
        from nanoseek.infer import LLM

        return LLM(model, dtype=dtype, **engine_kwargs)
    if not callable(getattr(model, "generate", None)):
        raise ValueError(f"{type(model).__name__} has no generate(prompts, params) method; pass "
                         "a nanoseek.infer.LLM or a model directory")
    return model


def resolve_think(template: str, think_prefilled: bool | None) -> bool:
    """Whether the prompt ends inside an open ``<think>`` (default: only for ``chat``)."""
    if template not in TEMPLATES:
        raise ValueError(f"template={template!r} is unknown; choose one of {list(TEMPLATES)}")
    return template == "chat" if think_prefilled is None else bool(think_prefilled)


def build_prompts(problems: Sequence[Problem], template: str, tokenizer: Any = None,
                  think_prefilled: bool | None = None) -> list[Prompt]:
    """Each problem's prompt: token ids when there is a tokenizer (text prompts get its BOS
    first), else text (``chat`` needs the tokenizer)."""
    think = resolve_think(template, think_prefilled)
    if template == "chat":
        if tokenizer is None:
            raise ValueError("template='chat' needs a tokenizer (the generator has none); use "
                             "template='plain' or 'r1_zero'")
        return [tokenizer.render_chat(chat_messages(p), add_generation_prompt=True,
                                      thinking=think).ids for p in problems]
    texts = [render_prompt(p, template, think) for p in problems]
    if tokenizer is None:
        return texts  # type: ignore[return-value]
    return tokenizer.encode_batch(texts, add_bos=tokenizer.bos_id is not None)


def context_length(llm: Generator) -> int | None:
    """The generator's context (prompt + output) in tokens, when it says."""
    engine = getattr(llm, "engine", None)
    return getattr(engine, "max_model_len", None) or getattr(llm, "max_model_len", None)


def fits_context(prompt: Prompt, limit: int | None) -> bool:
    """False for token-id prompts of ``limit`` tokens or more (no room for one output token)."""
    return limit is None or isinstance(prompt, str) or len(prompt) < limit


def sampling_params(n: int, temperature: float, top_p: float, max_tokens: int,
                    seed: int | None) -> Any:
    """``SamplingParams`` (imported lazily, it pulls in torch)."""
    from nanoseek.infer.sampling import SamplingParams

    return SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                          seed=seed)


def generate_completions(llm: Generator, prompts: Sequence[Prompt],
                         params: Sequence[Any]) -> list[list[Completion]]:
    """One ``llm.generate`` call; ``[prompt][sample]`` completions."""
    if not prompts:
        return []
    outputs = llm.generate(list(prompts), list(params))
    if len(outputs) != len(prompts):
        raise RuntimeError(f"generate returned {len(outputs)} outputs for {len(prompts)} prompts")
    return [[Completion(o.text, len(o.token_ids), o.finish_reason) for o in out.outputs]
            for out in outputs]


def make_rewards(think_prefilled: bool, workers: int, timeout_s: float) -> RewardSet:
    """The ``accuracy`` + ``format`` rewards (a context manager: it owns worker processes)."""
    return RewardSet(["accuracy", "format"], timeout_s=timeout_s, workers=workers,
                     options={"format": {"think_prefilled": think_prefilled}})


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_problems(task: str, num_problems: int | None = None, seed: int = 0,
                  split: str = "test", difficulty: int | None = None) -> list[Problem]:
    """``num_problems`` problems of a built-in task (default DEFAULT_NUM_PROBLEMS), or the
    first ``num_problems`` (default all) of a JSONL task file (``split`` does not apply).
    A built-in task's ``test`` split is an evaluation set: each problem appears once
    (``distinct_problems``); ``train`` draws with replacement, as training data does."""
    if num_problems is not None and num_problems < 1:
        raise ValueError(f"num_problems={num_problems} must be >= 1")
    if task in TASKS:
        kwargs = {} if difficulty is None else {"difficulty": difficulty}
        if split == "test":
            return distinct_problems(task, num_problems or DEFAULT_NUM_PROBLEMS, seed=seed,
                                     **kwargs)
        return get_task(task)(num_problems or DEFAULT_NUM_PROBLEMS, seed=seed, split=split,
                              **kwargs)
    path = Path(task)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if difficulty is not None:
            raise ValueError(f"--difficulty applies to the built-in tasks {sorted(TASKS)}, "
                             f"not to the task file {path}")
        return load_task_file(path)[:num_problems]
    raise ValueError(f"task={task!r} is neither a built-in task {sorted(TASKS)} nor a JSONL "
                     "task file")


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalResult:
    """Metrics (``aggregate``'s keys plus ``skipped_too_long``, ``reward_errors``,
    ``reward_timeouts``, ``seconds``), the run's settings and one record per evaluated
    problem (skipped ones have none)."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    records: list[ProblemRecord] = field(default_factory=list)

    @property
    def pass_at_1(self) -> float | None:
        return self.metrics.get("pass@1")

    def pass_at(self, k: int) -> float | None:
        """pass@k if it was computed (``ks``), else None."""
        return self.metrics.get(f"pass@{k}")

    @property
    def maj_at_k(self) -> float | None:
        return self.metrics.get(f"maj@{self.config['samples']}")

    @property
    def greedy_accuracy(self) -> float | None:
        return self.metrics.get("greedy")

    @property
    def format_rate(self) -> float | None:
        return self.metrics.get("format_rate")

    @property
    def mean_response_tokens(self) -> float | None:
        return self.metrics.get("mean_response_tokens")

    def to_dict(self, completions: bool = True) -> dict[str, Any]:
        """``{"config", "metrics", "records"}``, JSON-ready (texts left out if not
        ``completions``)."""
        return {"config": self.config, "metrics": self.metrics,
                "records": [r.to_dict(completions) for r in self.records]}

    def to_markdown(self) -> str:
        """A heading, a settings line and a metric table."""
        c, m = self.config, self.metrics
        lines = [f"### eval: {c['task']} ({m['num_problems']} problems)", "",
                 f"model `{c['model']}` · template `{c['template']}` · {c['samples']} samples at "
                 f"T={c['temperature']:g}, top-p {c['top_p']:g} · max {c['max_tokens']} tokens "
                 f"· seed {c['seed']}", "", "| metric | value |", "|---|---:|"]
        for key, value in m.items():
            if key.startswith(("pass@", "maj@")) or key in _PERCENT_ROWS:
                lines.append(f"| {_PERCENT_ROWS.get(key, key)} | {_percent(value)} |")
        tokens = m["mean_response_tokens"]
        lines.append(f"| mean response tokens | {'n/a' if tokens is None else f'{tokens:.1f}'} |")
        lines += ["", f"skipped (prompt longer than the context): {m['skipped_too_long']} · "
                      f"reward errors: {m['reward_errors']} · timeouts: {m['reward_timeouts']} · "
                      f"{m['seconds']:.1f} s"]
        return "\n".join(lines)


_PERCENT_ROWS = {"greedy": "greedy", "format_rate": "format", "truncated_rate": "truncated"}


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _check_eval_args(problems: Sequence[Problem], samples: int, max_tokens: int) -> None:
    if not problems:
        raise ValueError("problems is empty; give at least one problem")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples={samples!r} must be an integer >= 1")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 1")


def _record(problem: Problem, comps: list[Completion], acc: Sequence[float],
            fmt: Sequence[float], greedy: tuple[Completion, float] | None) -> ProblemRecord:
    texts = [c.text for c in comps]
    record = ProblemRecord(
        prompt=problem.prompt, answer=problem.answer, task=problem.task, completions=texts,
        answers=[extract_answer(t) for t in texts], keys=[answer_key(t, problem) for t in texts],
        lengths=[c.num_tokens for c in comps], finish_reasons=[c.finish_reason for c in comps],
        correct=[bool(a == 1.0) for a in acc], formatted=[bool(f == 1.0) for f in fmt])
    if greedy is not None:
        comp, ok = greedy
        record.greedy_completion, record.greedy_length = comp.text, comp.num_tokens
        record.greedy_answer, record.greedy_correct = extract_answer(comp.text), bool(ok == 1.0)
    return record


def evaluate(llm: str | Path | Generator, problems: Sequence[Problem], samples: int = 4, *,
             max_tokens: int = 512, temperature: float = 0.6, top_p: float = 0.95,
             seed: int = 0, template: str = "chat", think_prefilled: bool | None = None,
             greedy: bool = True, ks: Sequence[int] | None = None, reward_workers: int = 2,
             reward_timeout_s: float = 5.0, task: str | None = None) -> EvalResult:
    """Evaluate ``llm`` (an ``LLM``, a model directory or any ``Generator``) on ``problems``.

    ``samples`` completions per problem at ``temperature`` / ``top_p`` (problem ``i`` seeded
    ``seed + i * samples``) and, with ``greedy``, one at temperature 0; pass@k for ``ks``
    (default 1, 2, 4, ..., samples). ``reward_workers=0`` scores in this process (no hard
    timeout). Prompts longer than the context are skipped and counted."""
    _check_eval_args(problems, samples, max_tokens)
    start = time.perf_counter()
    gen = load_generator(llm)
    think = resolve_think(template, think_prefilled)
    prompts = build_prompts(problems, template, getattr(gen, "tokenizer", None), think)
    limit = context_length(gen)
    kept = [i for i, p in enumerate(prompts) if fits_context(p, limit)]
    params = [sampling_params(samples, temperature, top_p, max_tokens, seed + i * samples)
              for i in kept]
    if greedy:
        params += [sampling_params(1, 0.0, 1.0, max_tokens, None) for _ in kept]
    owners = kept * (2 if greedy else 1)
    outputs = generate_completions(gen, [prompts[i] for i in owners], params)
    flat = [(problems[i], c) for i, comps in zip(owners, outputs, strict=True) for c in comps]
    with make_rewards(think, reward_workers if flat else 0, reward_timeout_s) as rewards:
        batch = rewards.score([c.text for _, c in flat], [p for p, _ in flat],
                              [c.num_tokens for _, c in flat])
    acc, fmt = batch.components["accuracy"], batch.components["format"]
    starts = [0]
    for comps in outputs:
        starts.append(starts[-1] + len(comps))
    records = []
    for j, i in enumerate(kept):
        lo, hi = starts[j], starts[j + 1]
        g = (outputs[len(kept) + j][0], acc[starts[len(kept) + j]]) if greedy else None
        records.append(_record(problems[i], outputs[j], acc[lo:hi], fmt[lo:hi], g))
    metrics = aggregate(records, ks, samples)
    metrics.update(skipped_too_long=len(problems) - len(kept),
                   reward_errors=sum(batch.errors.values()),
                   reward_timeouts=sum(batch.timeouts.values()),
                   seconds=time.perf_counter() - start)
    config = {"model": str(llm) if isinstance(llm, str | Path) else type(llm).__name__,
              "task": task or _task_label(problems), "template": template,
              "think_prefilled": think, "samples": samples, "temperature": temperature,
              "top_p": top_p, "max_tokens": max_tokens, "seed": seed, "greedy": greedy}
    return EvalResult(config, metrics, records)


def _task_label(problems: Sequence[Problem]) -> str:
    return ",".join(sorted({p.task for p in problems}))


# ---------------------------------------------------------------------------------------------
# command line


def add_task_args(parser: argparse.ArgumentParser, split: str, template: str = "chat") -> None:
    """``--task``, ``--num-problems``, ``--split``, ``--difficulty``, ``--template`` and the
    think-prefill switch (shared with ``nanoseek sample``)."""
    parser.add_argument("--task", required=True,
                        help=f"a built-in task ({', '.join(TASKS)}) or a JSONL task file")
    parser.add_argument("--num-problems", type=int, default=None,
                        help=f"problems to use (default: {DEFAULT_NUM_PROBLEMS} generated, or "
                             "every line of a file)")
    parser.add_argument("--split", choices=("train", "test"), default=split,
                        help="split of a built-in task")
    parser.add_argument("--difficulty", type=int, default=None,
                        help="difficulty of a built-in task (default: the task's own)")
    parser.add_argument("--template", choices=TEMPLATES, default=template,
                        help="prompt format (chat = the tokenizer's R1 chat template)")
    parser.add_argument("--think-prefilled", action=argparse.BooleanOptionalAction,
                        default=None, help="end the prompt with '<think>\\n' (default: only "
                                           "with the chat template)")


def add_generation_args(parser: argparse.ArgumentParser, samples: int, max_tokens: int) -> None:
    """Model, dtype, threads, sampling and reward-worker options (shared with ``sample``)."""
    parser.add_argument("--model", required=True, help="HF-format model directory")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="weights dtype (default: config.json's torch_dtype)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--samples", type=int, default=samples, help="samples per problem (k)")
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help="most tokens per completion")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the problems (generated tasks) and the sampling")
    parser.add_argument("--reward-workers", type=int, default=2,
                        help="processes that score answers (0 = in this process, no timeout)")
    parser.add_argument("--reward-timeout", type=float, default=5.0,
                        help="seconds per reward call before it scores 0")


def open_model(args: argparse.Namespace) -> Generator:
    """``load_generator`` for the shared CLI options."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return load_generator(args.model, dtype=args.dtype)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generation_args(parser, samples=4, max_tokens=512)
    add_task_args(parser, split="test")
    parser.add_argument("--no-greedy", action="store_true", help="skip the greedy completion")
    parser.add_argument("--out", default=None, help="write the full result (JSON) here")
    parser.add_argument("--json", action="store_true",
                        help="print JSON (config, metrics, records without texts)")
    parser.add_argument("--quiet", action="store_true", help="no status spinner")
    return parser


@contextmanager
def _status(enabled: bool, text: str) -> Iterator[None]:
    """A rich spinner on stderr while the engine works (one call: no bar to advance)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        problems = load_problems(args.task, args.num_problems, args.seed, args.split,
                                 args.difficulty)
        llm = open_model(args)
        spinner = not args.quiet and sys.stderr.isatty()
        with _status(spinner, f"evaluating {len(problems)} problems x {args.samples} samples"):
            result = evaluate(llm, problems, args.samples, max_tokens=args.max_tokens,
                              temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                              template=args.template, think_prefilled=args.think_prefilled,
                              greedy=not args.no_greedy, reward_workers=args.reward_workers,
                              reward_timeout_s=args.reward_timeout,
                              task=Path(args.task).name if args.task not in TASKS else args.task)
    except (ValueError, FileNotFoundError) as error:
        print(f"nanoseek eval: error: {error}", file=sys.stderr)
        return 2
    result.config["model"] = args.model
    if args.out:
        write_json_atomic(args.out, result.to_dict(completions=True))
    if args.json:
        print(json.dumps(result.to_dict(completions=False), ensure_ascii=False))
    else:
        print(result.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
