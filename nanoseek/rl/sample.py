"""``nanoseek sample``: rejection sampling (R1 §2.3, stage 3) into SFT JSONL.

    nanoseek sample --model out/r1 --task arithmetic --split train --num-problems 2000 \\
        --samples 8 --out data/sft/arithmetic.jsonl

Each prompt gets ``--samples`` k completions (problem ``i`` seeded ``seed + i * k``), scored by
the ``accuracy`` and ``format`` rewards. A completion is **verified** when both are 1; verified
completions equal up to whitespace are kept once, and ``--keep shortest`` keeps only the
shortest per prompt. Each kept trace is one JSONL line::

    {"messages": [{"role": "user", "content": "What is 7 * 8?\\nPlease reason step by step..."},
                  {"role": "assistant", "content": "\\\\boxed{56}",
                   "reasoning_content": "7*8+0=56, write 6 carry 5 -> 56"}],
     "task": "arithmetic", "answer": "56", "prompt_key": "9c1d...", "num_tokens": 31}

The user turn is the chat prompt (the problem and R1's instruction, what ``nanoseek eval
--template chat`` asks) whichever template the teacher was sampled with; the completion is split
at ``</think>`` into ``reasoning_content`` and ``content``, which ``Tokenizer.render_chat``
renders back as ``<think>\\n...\\n</think>\\n\\n...``.

Files. ``OUT`` (the traces), ``OUT.progress`` (one JSON line per finished batch: its prompt keys,
counters and token counts; the commit log) and ``OUT``'s ``.stats.json`` (totals over all runs,
rewritten atomically after every batch). A batch is appended to ``OUT`` (flush + fsync) before
its log line, so a crash loses at most that batch. **Resume** by running the same command again:
prompts in the log (or, with no log, in ``OUT``) are skipped, a torn last line is cut off, and
traces of a batch that never reached the log are dropped. Repeated prompts in the input are
sampled once. Prompts longer than the context are skipped and counted; a reward that raises or
times out scores 0 and is counted; zero kept traces log a warning and leave ``OUT`` empty.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nanoseek.data.tasks import Problem, chat_messages
from nanoseek.eval.metrics import length_summary
from nanoseek.eval.run import (
    Completion,
    Generator,
    add_generation_args,
    add_task_args,
    build_prompts,
    context_length,
    fits_context,
    generate_completions,
    load_generator,
    load_problems,
    make_rewards,
    open_model,
    resolve_think,
    sampling_params,
    write_json_atomic,
)
from nanoseek.rl.rewards import RewardSet

log = logging.getLogger(__name__)

KEEP = ("all", "shortest")
COUNTERS = ("prompts", "skipped_too_long", "samples", "correct", "formatted", "verified", "kept",
            "duplicates", "prompts_with_kept", "generated_tokens", "kept_tokens",
            "reward_errors", "reward_timeouts")


@dataclass
class SampleStats:
    """Totals of a rejection-sampling output, over every run that wrote to it.

    ``prompts`` were attempted (``skipped_too_long`` of them not sampled); of ``samples``
    completions, ``correct`` / ``formatted`` passed the accuracy / format reward, ``verified``
    both; ``kept`` were written and ``duplicates`` verified ones dropped (same text, or not the
    shortest with ``keep="shortest"``). ``lengths`` / ``kept_lengths``: token counts of all /
    kept completions. ``resumed`` and ``repeated`` count this run's prompts skipped as already
    done and as repeats of an earlier prompt in the input."""

    out_path: str
    prompts: int = 0
    skipped_too_long: int = 0
    samples: int = 0
    correct: int = 0
    formatted: int = 0
    verified: int = 0
    kept: int = 0
    duplicates: int = 0
    prompts_with_kept: int = 0
    generated_tokens: int = 0
    kept_tokens: int = 0
    reward_errors: int = 0
    reward_timeouts: int = 0
    resumed: int = 0
    repeated: int = 0
    lengths: list[int] = field(default_factory=list, repr=False)
    kept_lengths: list[int] = field(default_factory=list, repr=False)

    @property
    def pass_rate(self) -> float:
        """Share of the samples that were verified (accuracy and format)."""
        return self.verified / self.samples if self.samples else 0.0

    def add(self, entry: dict[str, Any]) -> None:
        """Add one batch's log entry."""
        for name in COUNTERS:
            setattr(self, name, getattr(self, name) + int(entry.get(name, 0)))
        self.lengths += entry.get("lengths", [])
        self.kept_lengths += entry.get("kept_lengths", [])

    def to_dict(self) -> dict[str, Any]:
        """Counters, rates and the response-length distributions (mean/median/p90/max)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("lengths", "kept_lengths")}
        out.update(pass_rate=self.pass_rate,
                   response_tokens=length_summary(self.lengths),
                   kept_response_tokens=length_summary(self.kept_lengths))
        return out

    def summary(self) -> str:
        """Three human-readable lines."""
        def dist(lengths: list[int]) -> str:
            s = length_summary(lengths)
            if not s["count"]:
                return "none"
            return f"mean {s['mean']:.1f}, median {s['median']:g}, p90 {s['p90']:g}, max {s['max']}"

        return "\n".join([
            f"kept {self.kept} traces from {self.prompts_with_kept} of {self.prompts} prompts "
            f"-> {self.out_path}",
            f"pass rate {100 * self.pass_rate:.1f}% ({self.verified} of {self.samples} samples "
            f"verified; {self.correct} correct, {self.formatted} well-formatted; "
            f"{self.duplicates} duplicates dropped)",
            f"response tokens: {dist(self.lengths)}; kept: {dist(self.kept_lengths)}",
            f"skipped: {self.skipped_too_long} prompts longer than the context, {self.resumed} "
            f"done before (resume), {self.repeated} repeated · reward errors "
            f"{self.reward_errors}, timeouts {self.reward_timeouts}"])


# ---------------------------------------------------------------------------------------------
# traces


def prompt_key(problem: Problem) -> str:
    """A short stable id of a problem (task and prompt), used to resume and deduplicate."""
    return hashlib.sha256(f"{problem.task}\0{problem.prompt}".encode()).hexdigest()[:16]


def split_completion(text: str, think_prefilled: bool) -> tuple[str, str]:
    """``(reasoning, answer)`` of a completion: the text before / after its ``</think>``
    (an opening ``<think>`` dropped unless the prompt had it); no ``</think>``: no reasoning."""
    head, sep, tail = text.partition("</think>")
    if not sep:
        return "", text.strip()
    if not think_prefilled:
        head = head.lstrip().removeprefix("<think>")
    return head.strip(), tail.strip()


def sft_record(problem: Problem, completion: Completion, think_prefilled: bool,
               key: str | None = None) -> dict[str, Any]:
    """One SFT JSONL record (see the module docstring) for a verified completion."""
    reasoning, answer = split_completion(completion.text, think_prefilled)
    return {"messages": [{"role": "user", "content": chat_messages(problem)[0]["content"]},
                         {"role": "assistant", "content": answer,
                          "reasoning_content": reasoning}],
            "task": problem.task, "answer": problem.answer,
            "prompt_key": key or prompt_key(problem), "num_tokens": completion.num_tokens}


def select_traces(verified: Sequence[Completion], keep: str = "all"
                  ) -> tuple[list[Completion], int]:
    """Verified completions without repeats (text equal up to whitespace), first ones first;
    ``keep="shortest"``: only the one with the fewest tokens. Returns (kept, dropped)."""
    unique: dict[str, Completion] = {}
    for c in verified:
        unique.setdefault(" ".join(c.text.split()), c)
    chosen = list(unique.values())
    if keep == "shortest" and chosen:
        chosen = [min(chosen, key=lambda c: c.num_tokens)]
    return chosen, len(verified) - len(chosen)


# ---------------------------------------------------------------------------------------------
# files: append-only JSONL with a commit log


def stats_path(out: Path) -> Path:
    """``traces.jsonl`` -> ``traces.stats.json``."""
    return out.with_name(out.stem + ".stats.json")


def progress_path(out: Path) -> Path:
    """``traces.jsonl`` -> ``traces.jsonl.progress`` (the commit log)."""
    return out.with_name(out.name + ".progress")


def read_appended_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file this stage appends to. Every append ends in a newline, so
    bytes after the last one, or an unparsable last line, are a torn write (a crash mid-append)
    and are cut off the file; a bad line before the last raises ValueError."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes of the complete lines
    lines = data[:end].split(b"\n")[:-1]
    records, offset = [], 0
    for lineno, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw) if raw.strip() else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            if lineno < len(lines):
                raise ValueError(f"{path}:{lineno}: not valid JSON; this file was not written "
                                 "by nanoseek sample (or was edited); move it away") from None
            end = offset
            break
        if record is not None and not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
        if record is not None:
            records.append(record)
        offset += len(raw) + 1
    if end < len(data):
        log.warning("%s: cutting off a torn last line (%d bytes)", path, len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)
    return records


def append_lines(path: Path, objects: Sequence[dict[str, Any]]) -> None:
    """Append one JSON line per object in one write, then flush and fsync."""
    if not objects:
        return
    text = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _rewrite_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                   encoding="utf-8")
    os.replace(tmp, path)


def resume_state(out: Path) -> tuple[set[str], SampleStats]:
    """Prompt keys already done and the totals so far; repairs a crashed run's files."""
    log_file, stats = progress_path(out), SampleStats(str(out))
    if not out.exists():
        log_file.unlink(missing_ok=True)  # the traces are gone: start over
        return set(), stats
    traces = read_appended_jsonl(out)
    if bad := [i for i, t in enumerate(traces) if not isinstance(t.get("prompt_key"), str)]:
        raise ValueError(f"{out}: record {bad[0] + 1} has no 'prompt_key'; this file was not "
                         "written by nanoseek sample; choose another --out")
    if not log_file.exists():
        return {t["prompt_key"] for t in traces}, stats
    entries = read_appended_jsonl(log_file)
    done = {key for entry in entries for key in entry.get("keys", [])}
    for entry in entries:
        stats.add(entry)
    committed = [t for t in traces if t["prompt_key"] in done]
    if len(committed) < len(traces):
        log.warning("%s: dropping %d traces of a batch that did not finish", out,
                    len(traces) - len(committed))
        _rewrite_jsonl(out, committed)
    return done, stats


# ---------------------------------------------------------------------------------------------
# the stage


@dataclass
class _Settings:
    k: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    template: str
    think: bool
    keep: str


def _sample_batch(gen: Generator, chunk: list[tuple[int, Problem, str]], rewards: RewardSet,
                  cfg: _Settings) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Sample, score and select one batch; (trace records, commit-log entry)."""
    problems = [p for _, p, _ in chunk]
    prompts = build_prompts(problems, cfg.template, getattr(gen, "tokenizer", None), cfg.think)
    limit = context_length(gen)
    fit = [j for j, prompt in enumerate(prompts) if fits_context(prompt, limit)]
    params = [sampling_params(cfg.k, cfg.temperature, cfg.top_p, cfg.max_tokens,
                              cfg.seed + chunk[j][0] * cfg.k) for j in fit]
    outputs = generate_completions(gen, [prompts[j] for j in fit], params)
    flat = [(problems[j], c) for j, comps in zip(fit, outputs, strict=True) for c in comps]
    batch = rewards.score([c.text for _, c in flat], [p for p, _ in flat],
                          [c.num_tokens for _, c in flat])
    ok = (batch.components["accuracy"] == 1.0) & (batch.components["format"] == 1.0)
    records, pos, duplicates = [], 0, 0
    for j, comps in zip(fit, outputs, strict=True):
        verified = [c for c, good in zip(comps, ok[pos:pos + len(comps)], strict=True) if good]
        pos += len(comps)
        chosen, dropped = select_traces(verified, cfg.keep)
        duplicates += dropped
        records += [sft_record(problems[j], c, cfg.think, chunk[j][2]) for c in chosen]
    entry = {"keys": [key for _, _, key in chunk], "prompts": len(chunk),
             "skipped_too_long": len(chunk) - len(fit), "samples": len(flat),
             "correct": int((batch.components["accuracy"] == 1.0).sum()),
             "formatted": int((batch.components["format"] == 1.0).sum()),
             "verified": int(ok.sum()), "kept": len(records), "duplicates": duplicates,
             "prompts_with_kept": len({r["prompt_key"] for r in records}),
             "generated_tokens": sum(c.num_tokens for _, c in flat),
             "kept_tokens": sum(r["num_tokens"] for r in records),
             "reward_errors": sum(batch.errors.values()),
             "reward_timeouts": sum(batch.timeouts.values()),
             "lengths": [c.num_tokens for _, c in flat],
             "kept_lengths": [r["num_tokens"] for r in records]}
    return records, entry


def _todo(problems: Sequence[Problem], done: set[str], stats: SampleStats
          ) -> list[tuple[int, Problem, str]]:
    """(index, problem, key) of the problems still to sample, each prompt once."""
    todo, seen = [], set()
    for i, problem in enumerate(problems):
        key = prompt_key(problem)
        if key in done:
            stats.resumed += 1
        elif key in seen:
            stats.repeated += 1
        else:
            seen.add(key)
            todo.append((i, problem, key))
    return todo


@contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich bar on stderr (prompts done, rate, ETA) yielding ``advance(n)``; a no-op if off."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("sampling", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task("prompts", total=total)
        yield lambda n: bar.advance(task, n)


def _check_args(k: int, keep: str, batch_size: int, max_tokens: int) -> None:
    for name, value in (("k", k), ("batch_size", batch_size), ("max_tokens", max_tokens)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be an integer >= 1")
    if keep not in KEEP:
        raise ValueError(f"keep={keep!r} is unknown; choose one of {list(KEEP)}")


def rejection_sample(llm: str | Path | Generator, problems: Sequence[Problem], k: int = 8,
                     out_path: str | Path = "traces.jsonl", *, max_tokens: int = 1024,
                     temperature: float = 0.6, top_p: float = 0.95, seed: int = 0,
                     template: str = "chat", think_prefilled: bool | None = None,
                     keep: str = "all", batch_size: int = 16, reward_workers: int = 2,
                     reward_timeout_s: float = 5.0, progress: bool = False) -> SampleStats:
    """Sample ``k`` completions per problem from ``llm`` (an ``LLM``, a model directory or any
    ``Generator``), keep the verified ones and append them to ``out_path`` as SFT JSONL,
    ``batch_size`` prompts per ``generate`` call; resumes an earlier run on the same file.
    Returns the totals (also written to the ``.stats.json`` file)."""
    _check_args(k, keep, batch_size, max_tokens)
    gen = load_generator(llm)
    cfg = _Settings(k, max_tokens, temperature, top_p, seed, template,
                    resolve_think(template, think_prefilled), keep)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done, stats = resume_state(out)
    out.touch()
    todo = _todo(problems, done, stats)
    with (make_rewards(cfg.think, reward_workers, reward_timeout_s) as rewards,
          _progress(progress, len(todo)) as advance):
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            records, entry = _sample_batch(gen, chunk, rewards, cfg)
            append_lines(out, records)
            append_lines(progress_path(out), [entry])
            stats.add(entry)
            write_json_atomic(stats_path(out), stats.to_dict())
            advance(len(chunk))
    write_json_atomic(stats_path(out), stats.to_dict())
    if stats.kept == 0:
        log.warning("rejection sampling kept no traces: %d of %d samples verified (%d correct, "
                    "%d well-formatted) on %d prompts; %s is empty. Try more samples, a larger "
                    "max_tokens or a stronger model.", stats.verified, stats.samples,
                    stats.correct, stats.formatted, stats.prompts, out)
    return stats


# ---------------------------------------------------------------------------------------------
# command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanoseek sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generation_args(parser, samples=8, max_tokens=1024)
    add_task_args(parser, split="train")
    parser.add_argument("--out", required=True, help="SFT JSONL to write (appended, resumable)")
    parser.add_argument("--keep", choices=KEEP, default="all",
                        help="keep every verified trace, or only the shortest per prompt")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="prompts per generate call (and per resume checkpoint)")
    parser.add_argument("--json", action="store_true", help="print the stats as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        problems = load_problems(args.task, args.num_problems, args.seed, args.split,
                                 args.difficulty)
        stats = rejection_sample(
            open_model(args), problems, args.samples, args.out, max_tokens=args.max_tokens,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed,
            template=args.template, think_prefilled=args.think_prefilled, keep=args.keep,
            batch_size=args.batch_size, reward_workers=args.reward_workers,
            reward_timeout_s=args.reward_timeout,
            progress=not args.quiet and sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as error:
        print(f"nanoseek sample: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False))
    else:
        print(stats.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
