"""Verifiable reasoning tasks: seeded generators, user task files and prompt templates.

Every item is a :class:`Problem` with a prompt, a reference answer, a checker
(:meth:`Problem.check`, which is the ``accuracy`` reward of ``nanoseek.rl.rewards``) and, for the
built-in generators, a short worked solution in the R1 format, so the same items serve as
pretraining / SFT text and as RL tasks::

    <think>
    8+5+0=13, write 3 carry 1 -> 3
    7+6+1=14, write 4 carry 1 -> 43
    write carry 1 -> 143
    </think>

    \\boxed{143}

Built-in tasks put the final answer in ``\\boxed{}`` (R1's convention for math); the checkers also
accept ``<answer>...</answer>``. Generators (``TASKS``) are deterministic in ``seed`` and keep
``train`` and ``test`` disjoint whatever the seed: a problem belongs to the test split when the hash
of its canonical key (``meta["key"]``: the operands, numbers and target, never the names or the
wording) falls in the first ``TEST_PERCENT`` of 100 buckets. Problems are drawn with replacement,
so a small problem space (1-digit arithmetic) repeats items; ``distinct_problems`` draws an
evaluation set without repeats.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
SPLITS = ("train", "test")
TEST_PERCENT = 10
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process is enclosed within <think> "
    "</think> tags and the final answer within \\boxed{{}}, i.e., <think> reasoning process "
    "here </think> \\boxed{{answer here}}.\nUser: {prompt}\nAssistant: "
)
CHAT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass
class Problem:
    """One verifiable problem.

    ``answer`` is the reference answer as text (for Countdown: one valid expression; any
    expression using ``meta["numbers"]`` once each that equals ``meta["target"]`` is correct).
    ``solution`` is a worked completion in the R1 format (``<think>\\n...\\n</think>\\n\\n`` then
    ``\\boxed{answer}``), or None when the source has none.
    """

    prompt: str
    answer: str
    task: str
    meta: dict[str, Any] = field(default_factory=dict)
    solution: str | None = None

    def check(self, completion: str) -> bool:
        """True when ``completion``'s final answer is correct (the ``accuracy`` reward == 1).

        Runs in this process without a hard timeout; score untrusted model output with
        ``nanoseek.rl.rewards.RewardSet``, which runs checks in worker processes.
        """
        from nanoseek.rl.rewards import accuracy  # lazy: data must not import rl at import time

        return accuracy(completion, self) == 1.0

    def to_record(self) -> dict[str, Any]:
        """A JSON-ready dict that ``load_task_file`` reads back (meta fields at top level)."""
        record = {**self.meta, "prompt": self.prompt, "answer": self.answer, "task": self.task}
        return record if self.solution is None else {**record, "solution": self.solution}

    def text(self, template: str = "plain") -> str:
        """Prompt (rendered with ``PROMPT_TEMPLATES[template]``) + worked solution: SFT/LM text."""
        if self.solution is None:
            raise ValueError(f"problem {self.prompt[:40]!r} has no solution to render as text")
        return render_prompt(self, template) + self.solution


# ---------------------------------------------------------------------------------------------
# prompt templates


def plain_prompt(problem: Problem, think_prefilled: bool = False) -> str:
    """``{prompt}\\n`` (+ ``<think>\\n``): the shortest form, for tiny models trained anew."""
    return problem.prompt + "\n" + ("<think>\n" if think_prefilled else "")


def r1_zero_prompt(problem: Problem, think_prefilled: bool = False) -> str:
    """The DeepSeek-R1-Zero template (R1 paper, Table 1) with the answer in ``\\boxed{}``.

    Ends with ``"Assistant: "``; with ``think_prefilled`` also with ``"<think>\\n"`` (as TinyZero
    prefills), and the completion then starts inside the thinking block.
    """
    return R1_ZERO_TEMPLATE.format(prompt=problem.prompt) + ("<think>\n" if think_prefilled else "")


def chat_messages(problem: Problem, with_solution: bool = False) -> list[dict[str, str]]:
    """``[{"role": "user", ...}]`` for a model with a chat template, with R1's recommended
    instruction ("Please reason step by step, and put your final answer within \\boxed{}.");
    ``with_solution`` appends the worked solution as the assistant turn (SFT), which the R1
    chat template renders unchanged (``<think>\\n...\\n</think>\\n\\n...``)."""
    messages = [{"role": "user", "content": f"{problem.prompt}\n{CHAT_INSTRUCTION}"}]
    if with_solution:
        messages.append({"role": "assistant", "content": solution_completion(problem)})
    return messages


PROMPT_TEMPLATES: dict[str, Callable[..., str]] = {"plain": plain_prompt, "r1_zero": r1_zero_prompt}


def render_prompt(problem: Problem, template: str = "plain", think_prefilled: bool = False) -> str:
    """``problem`` rendered with the named entry of ``PROMPT_TEMPLATES``."""
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"template={template!r} is unknown; choose one of "
                         f"{sorted(PROMPT_TEMPLATES)} (or chat_messages for a chat template)")
    return PROMPT_TEMPLATES[template](problem, think_prefilled)


def solution_completion(problem: Problem, think_prefilled: bool = False) -> str:
    """The worked solution as the completion after ``render_prompt(..., think_prefilled)``."""
    if problem.solution is None:
        raise ValueError(f"problem {problem.prompt[:40]!r} has no solution")
    return problem.solution.removeprefix("<think>\n") if think_prefilled else problem.solution


def r1_solution(steps: list[str], answer: str) -> str:
    """``<think>\\n{steps}\\n</think>\\n\\n\\boxed{answer}`` (the shape chat templates render)."""
    return "<think>\n" + "\n".join(steps) + "\n</think>\n\n\\boxed{" + answer + "}"


# ---------------------------------------------------------------------------------------------
# splits and the shared generator loop


def split_of(task: str, key: str) -> str:
    """``"test"`` for TEST_PERCENT of canonical keys (by hash), ``"train"`` for the rest."""
    digest = hashlib.sha256(f"{task}|{key}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT else "train"


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r} is out of range; use an integer in [{lo}, {hi}]")


def _generate(task: str, n: int, seed: int, split: str, difficulty: int,
              make: Callable[[random.Random], Problem]) -> list[Problem]:
    """``n`` problems from ``make(rng)`` that fall in ``split`` (others are drawn again)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; use 'train' or 'test'")
    _check_range("n", n, 0, 10**9)
    rng = random.Random(f"nanoseek/{task}/{difficulty}/{seed}")
    out: list[Problem] = []
    for _ in range(100 * n + 10_000):
        if len(out) == n:
            break
        problem = make(rng)
        if split_of(task, problem.meta["key"]) == split:
            problem.meta.update(split=split, difficulty=difficulty)
            out.append(problem)
    if len(out) < n:
        raise ValueError(f"{task}: could not draw {n} {split} problems at "
                         f"difficulty={difficulty}; raise the difficulty (too few distinct ones)")
    return out


# ---------------------------------------------------------------------------------------------
# arithmetic: column addition / subtraction / multiplication with carries written out


def _digits(x: int, width: int) -> list[int]:
    """Digits of ``x`` least significant first, zero-padded to ``width``."""
    return [int(c) for c in reversed(str(x).zfill(width))]


def _never() -> bool:
    return False


def _column_add(a: int, b: int, slip: Callable[[], bool] = _never) -> list[str]:
    """Lines of ``a + b`` column by column; the last line ends with ``-> a+b``.

    ``slip()`` is asked at every carry of 1: when it says True the teacher writes ``carry 0``
    (forgets the carry) and goes on, so the lines end with the wrong sum that implies.
    """
    width = max(len(str(a)), len(str(b)))
    lines, partial, carry = [], "", 0
    for x, y in zip(_digits(a, width), _digits(b, width), strict=True):
        s = x + y + carry
        partial = str(s % 10) + partial
        out = 0 if s >= 10 and slip() else s // 10
        lines.append(f"{x}+{y}+{carry}={s}, write {s % 10} carry {out} -> {partial}")
        carry = out
    if carry:
        lines.append(f"write carry {carry} -> {carry}{partial}")
    return lines


def _column_sub(a: int, b: int, slip: Callable[[], bool] = _never) -> list[str]:
    """Lines of ``a - b`` (``a >= b``) with borrows; the last line ends with ``-> a-b``.

    ``slip()`` is asked at every borrow: when it says True the teacher writes ``borrow 0``
    (forgets to take it from the next column), so the lines end with the wrong difference.
    """
    width = len(str(a))
    lines, partial, borrow = [], "", 0
    for x, y in zip(_digits(a, width), _digits(b, width), strict=True):
        d = x - y - borrow
        if d >= 0:
            line, out = f"{x}-{y}-{borrow}={d}, write {d} borrow 0", 0
        else:
            d += 10
            out = 0 if slip() else 1
            line = f"{x}+10-{y}-{borrow}={d}, write {d} borrow {out}"
        borrow, partial = out, str(d) + partial
        lines.append(f"{line} -> {partial}")
    if partial != str(int(partial)):
        lines.append(f"drop leading zeros -> {int(partial)}")
    return lines


def _column_mul_digit(a: int, y: int) -> list[str]:
    """Lines of ``a * y`` for one digit ``y``; the last line ends with ``-> a*y``."""
    lines, partial, carry = [], "", 0
    for x in _digits(a, len(str(a))):
        v = x * y + carry
        partial = str(v % 10) + partial
        lines.append(f"{x}*{y}+{carry}={v}, write {v % 10} carry {v // 10} -> {partial}")
        carry = v // 10
    if carry:
        lines.append(f"write carry {carry} -> {carry}{partial}")
    if str(a * y) != (f"{carry}{partial}" if carry else partial):
        lines.append(f"drop leading zeros -> {a * y}")
    return lines


def _long_mul(a: int, b: int) -> list[str]:
    """Lines of ``a * b``: one partial product per digit of ``b``, shifted, then summed."""
    if b < 10:
        return _column_mul_digit(a, b)
    lines, total = [], None
    for place, y in enumerate(_digits(b, len(str(b)))):
        lines.append(f"{a}*{y}:")
        lines += _column_mul_digit(a, y)
        part = a * y * 10**place
        if place:
            lines.append(f"shift {place} -> {part}")
        if total is not None:
            lines.append(f"{total}+{part}:")
            lines += _column_add(total, part)
            part += total
        total = part
    return lines


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def _last_value(steps: list[str]) -> int:
    """The number a worked solution's last line ends with (``... -> 42``)."""
    return int(steps[-1].rsplit("-> ", 1)[1])


def _make_arithmetic(rng: random.Random, digits: int, ops: str,
                     slip: Callable[[], bool] = _never) -> Problem:
    op = rng.choice(ops)
    a = _operand(rng, digits)
    b = _operand(rng, digits if op != "*" else (digits + 1) // 2)
    if op == "+":
        value, steps = a + b, _column_add(a, b, slip)
    elif op == "-":
        value = a - b
        if a >= b:
            steps = _column_sub(a, b, slip)
        else:
            steps = [f"{a}<{b}, so {a}-{b}=-({b}-{a})", *_column_sub(b, a, slip)]
            steps.append(f"negate -> {-_last_value(steps)}")
    else:
        value, steps = a * b, _long_mul(a, b)
    key = f"{min(a, b)}{op}{max(a, b)}" if op in "+*" else f"{a}{op}{b}"
    written = _last_value(steps)
    meta = {"key": key, "a": a, "b": b, "op": op, **({"slipped": True} if written != value else {})}
    return Problem(prompt=f"What is {a} {op} {b}?", answer=str(value), task="arithmetic",
                   meta=meta, solution=r1_solution(steps, str(written)))


def arithmetic(n: int, seed: int = 0, difficulty: int = 2, split: str = "train",
               ops: str = "+-*", slip_rate: float = 0.0) -> list[Problem]:
    """``a op b`` with ``op`` drawn from ``ops``; ``a`` has ``difficulty`` digits and so does
    ``b`` (``ceil(difficulty / 2)`` digits for ``*``). Solutions work column by column.

    ``slip_rate``: the worked solutions come from a fallible teacher that forgets each carry or
    borrow of ``+`` and ``-`` with this probability and writes the wrong answer that follows
    (``meta["slipped"]``). ``answer`` (what the checker and every reward use) stays the true
    value, so imitating the solutions copies the slips and a verifiable reward can unlearn
    them. The problems drawn do not depend on ``slip_rate`` (slips use their own RNG).
    """
    _check_range("difficulty", difficulty, 1, 12)
    if not ops or set(ops) - set("+-*"):
        raise ValueError(f"ops={ops!r} must be a non-empty string of '+', '-', '*'")
    if not 0.0 <= slip_rate <= 1.0:
        raise ValueError(f"slip_rate={slip_rate!r} must be a probability in [0, 1]")
    slips = random.Random(f"nanoseek/arithmetic-slips/{difficulty}/{seed}")
    return _generate("arithmetic", n, seed, split, difficulty,
                     lambda rng: _make_arithmetic(rng, difficulty, ops,
                                                  lambda: slips.random() < slip_rate))


# ---------------------------------------------------------------------------------------------
# Countdown (TinyZero): combine the numbers, each once, with + - * / to reach the target


def _countdown_chain(rng: random.Random, numbers: list[int]) -> tuple[int, str, list[str]]:
    """Fold ``numbers`` left to right with random ops, keeping every intermediate a natural
    number (``-`` only when it stays >= 0, ``/`` only when exact); (target, expression, steps)."""
    acc, expr, last_op, steps = numbers[0], str(numbers[0]), "", []
    for x in numbers[1:]:
        op = rng.choice("+*" + "-" * (acc >= x) + "/" * (x > 1 and acc % x == 0))
        new = {"+": acc + x, "-": acc - x, "*": acc * x, "/": acc // max(x, 1)}[op]
        steps.append(f"{acc}{op}{x}={new}")
        if op in "*/" and last_op in ("+", "-"):
            expr = f"({expr})"
        acc, expr, last_op = new, f"{expr}{op}{x}", op
    return acc, expr, steps


def _make_countdown(rng: random.Random, count: int, max_number: int, max_target: int) -> Problem:
    for _ in range(10_000):
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        chain = _countdown_chain(rng, numbers)
        if chain[0] <= max_target:
            break
    else:
        raise ValueError(f"countdown: no target <= max_target={max_target} found with {count} "
                         f"numbers up to {max_number}; raise max_target")
    target, expr, steps = chain
    shown = numbers[:]
    rng.shuffle(shown)
    prompt = (f"Using the numbers {shown}, create an equation that equals {target}. You can use "
              f"+, -, * and / and each number exactly once.")
    return Problem(prompt=prompt, answer=expr, task="countdown",
                   meta={"key": f"{sorted(numbers)}={target}", "numbers": shown, "target": target},
                   solution=r1_solution(steps, expr))


def countdown(n: int, seed: int = 0, difficulty: int = 3, split: str = "train",
              max_number: int = 9, max_target: int = 99) -> list[Problem]:
    """``difficulty`` numbers in [1, max_number] and a target in [0, max_target], solvable by
    construction; the solution folds the numbers left to right (``3*7=21``, ``21+5=26``...)."""
    _check_range("difficulty", difficulty, 2, 6)
    _check_range("max_number", max_number, 2, 10**6)
    _check_range("max_target", max_target, 1, 10**9)
    return _generate("countdown", n, seed, split, difficulty,
                     lambda rng: _make_countdown(rng, difficulty, max_number, max_target))


# ---------------------------------------------------------------------------------------------
# templated word problems

_NAMES = ("Alice", "Bob", "Sam", "Mia", "Leo", "Ana", "Omar", "Yuki", "Ravi", "Zoe")
_THINGS = ("apples", "cookies", "marbles", "stickers", "cards", "pencils")
_ITEMS = ("pen", "book", "toy", "cup", "ball", "hat")


def _big(rng: random.Random, digits: int) -> int:
    return rng.randint(2, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10**digits - 1)


def _word_problem(rng: random.Random, d: int) -> tuple[str, tuple[int, ...], str, list[str], int]:
    """(template id, numbers, prompt, steps, answer) for one random template."""
    name, other = rng.sample(_NAMES, 2)
    thing, item = rng.choice(_THINGS), rng.choice(_ITEMS)
    kind = rng.choice(("buy_give", "speed", "change", "share", "age", "boxes"))
    if kind == "buy_give":
        a, b = _big(rng, d), _big(rng, d)
        c = rng.randint(1, a + b)
        return kind, (a, b, c), (
            f"{name} has {a} {thing}. {name} buys {b} more and gives {c} to {other}. "
            f"How many {thing} does {name} have now?"
        ), [f"has {a}, buys {b}: {a}+{b}={a + b}", f"gives {c}: {a + b}-{c}={a + b - c}"], a + b - c
    if kind == "speed":
        v, t = _big(rng, d), rng.randint(2, 9)
        return kind, (v, t), (
            f"A train travels at {v} km per hour for {t} hours. How many km does it travel?"
        ), [f"distance = speed * time: {v}*{t}={v * t}"], v * t
    if kind == "change":
        p, k = _big(rng, d), rng.randint(2, 9)
        m = p * k + rng.randint(0, 10**d)
        return kind, (p, k, m), (
            f"A {item} costs {p} dollars. {name} buys {k} of them and pays with {m} dollars. "
            f"How much change does {name} get?"
        ), [f"cost: {p}*{k}={p * k}", f"change: {m}-{p * k}={m - p * k}"], m - p * k
    if kind == "share":
        q, k = _big(rng, d), rng.randint(2, 9)
        return kind, (q * k, k), (
            f"{name} shares {q * k} {thing} equally among {k} friends. "
            f"How many {thing} does each friend get?"
        ), [f"{q * k}/{k}={q}"], q
    if kind == "age":
        a, g, y = _big(rng, d), rng.randint(18, 40), rng.randint(2, 9)
        return kind, (a, g, y), (
            f"{name} is {a} years old. {name}'s mother is {g} years older. "
            f"How old will {name}'s mother be in {y} years?"
        ), [f"mother now: {a}+{g}={a + g}", f"in {y} years: {a + g}+{y}={a + g + y}"], a + g + y
    b, k, e = rng.randint(2, 9), _big(rng, d), _big(rng, d)
    return kind, (b, k, e), (
        f"There are {b} boxes with {k} {thing} each, and {e} more {thing} on the table. "
        f"How many {thing} are there in total?"
    ), [f"in boxes: {b}*{k}={b * k}", f"in total: {b * k}+{e}={b * k + e}"], b * k + e


def _make_word_problem(rng: random.Random, digits: int) -> Problem:
    kind, numbers, prompt, steps, value = _word_problem(rng, digits)
    return Problem(prompt=prompt, answer=str(value), task="word_problems",
                   meta={"key": f"{kind}:{numbers}", "template": kind},
                   solution=r1_solution(steps, str(value)))


def word_problems(n: int, seed: int = 0, difficulty: int = 1,
                  split: str = "train") -> list[Problem]:
    """Templated stories (shopping, trains, sharing, ages, boxes) whose main quantities have
    ``difficulty`` digits; solutions give one labelled equation per step."""
    _check_range("difficulty", difficulty, 1, 6)
    return _generate("word_problems", n, seed, split, difficulty,
                     lambda rng: _make_word_problem(rng, difficulty))


TASKS: dict[str, Callable[..., list[Problem]]] = {
    "arithmetic": arithmetic,
    "countdown": countdown,
    "word_problems": word_problems,
}


def get_task(name: str) -> Callable[..., list[Problem]]:
    """The generator registered as ``name`` in ``TASKS``."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is unknown; choose one of {sorted(TASKS)} "
                         "or load a JSONL file with load_task_file")
    return TASKS[name]


def distinct_problems(task: str, n: int, seed: int = 0, split: str = "test",
                      **kwargs: Any) -> list[Problem]:
    """The first ``n`` problems of ``task`` whose keys differ: an evaluation set counts each
    problem once (the generators draw with replacement). Draws of ``n``, ``2n``, ... up to
    ``16n`` problems (the first ``m`` of a larger draw are the draw of ``m``, so the set is
    deterministic); fewer than ``n`` when the split holds fewer at these settings, with a
    warning."""
    make, out = get_task(task), []
    for draw in (n * 2**k for k in range(5)):
        out = _first_distinct(make(draw, seed=seed, split=split, **kwargs), n)
        if len(out) == n:
            return out
    log.warning("%s: only %d distinct %s problems in %d draws at %s; using those", task,
                len(out), split, 16 * n, kwargs or "the defaults")
    return out


def _first_distinct(problems: list[Problem], n: int) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for problem in problems:
        if len(out) == n:
            break
        if problem.meta["key"] not in seen:
            seen.add(problem.meta["key"])
            out.append(problem)
    return out


# ---------------------------------------------------------------------------------------------
# user task files

_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)
_CALCULATOR = re.compile(r"<<[^<>]*>>")


def _from_gsm8k(question: str, answer: str, where: str) -> Problem:
    """GSM8K record: worked solution, then ``#### 42``; ``<<6*7=42>>`` annotations dropped."""
    match = _GSM8K_FINAL.search(answer)
    if match is None:
        raise ValueError(f"{where}: 'answer' has no '#### <final answer>' line (GSM8K style)")
    final = match.group(1).replace(",", "")
    steps = _CALCULATOR.sub("", answer[: match.start()]).strip()
    solution = r1_solution(steps.splitlines(), final) if steps else None
    return Problem(prompt=question, answer=final, task="file", solution=solution)


def _parse_record(line: str, where: str) -> Problem:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    answer = record.pop("answer", None)
    if isinstance(answer, int | float) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: needs a non-empty string 'answer'")
    if isinstance(record.get("prompt"), str):
        solution = record.pop("solution", None)
        if solution is not None and not isinstance(solution, str):
            raise ValueError(f"{where}: 'solution' must be a string when given")
        problem = Problem(prompt=record.pop("prompt"), answer=answer.strip(), task="file",
                          solution=solution)
    elif isinstance(record.get("question"), str):
        problem = _from_gsm8k(record.pop("question"), answer, where)
    else:
        raise ValueError(f"{where}: needs a string 'prompt' (or GSM8K-style 'question' with "
                         "'answer' ending in '#### <final answer>')")
    problem.task = str(record.pop("task", problem.task))
    if problem.task == "countdown" and not {"numbers", "target"} <= record.keys():
        raise ValueError(f"{where}: a countdown task needs 'numbers' and 'target'")
    problem.meta = record
    return problem


def load_task_file(path: str | Path) -> list[Problem]:
    """Problems from a JSONL file: one object per line, ``{"prompt", "answer"}`` (optional
    ``solution``, ``task``; other fields go to ``meta``) or GSM8K's ``{"question", "answer"}``
    with the final answer after ``####``. Blank lines are skipped; a bad line raises ValueError
    naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    problems = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                problems.append(_parse_record(line, f"{path}:{lineno}"))
    if not problems:
        raise ValueError(f"{path}: no problems (the file is empty)")
    return problems
