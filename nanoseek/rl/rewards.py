"""Rule-based rewards for the R1 recipe: named pure components and a fault-tolerant batch scorer.

A component is a module-level function ``f(completion, problem, **options) -> float``; a keyword
``length`` (if it declares one) receives the completion's token count. ``REWARDS`` names them:

========== ================================================================================
accuracy   1 if the final answer is correct, else 0. The answer is the last ``\\boxed{...}``
           (balanced braces) or ``<answer>...</answer>`` after ``</think>``; Countdown problems
           are checked by :func:`check_countdown`, others by exact/numeric comparison and then
           ``math_verify`` (gold first).
format     1 if the completion is ``<think>`` reasoning ``</think>`` then an answer (R1).
countdown  TinyZero's graded Countdown score: 1 correct, 0.1 an answer that is wrong, 0 none.
overlong   DAPO's soft overlong punishment in [-1, 0] (options ``max_len``, ``cache_len``).
language   R1's language consistency: share of the letters in the target script.
========== ================================================================================

:class:`RewardSet` scores a batch in worker processes with a per-call timeout: a component that
raises, returns a non-finite value or times out scores 0, is counted in the returned
:class:`RewardBatch` and logged, and the batch goes on. ``math_verify``'s own timeouts rely on
``signal.alarm`` (main thread only), so the hard limit is the parent killing the worker
(``reward_workers.py``). The Countdown parser is ``countdown.py``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from nanoseek.data.tasks import Problem
from nanoseek.rl.countdown import check_countdown
from nanoseek.rl.reward_workers import Job, Result, WorkerPool, call_component

log = logging.getLogger(__name__)

COUNTDOWN_FORMAT_SCORE = 0.1  # TinyZero: an answer was given but it is wrong
MAX_ANSWER_CHARS = 1000  # longer predicted answers are wrong without parsing them
MATH_VERIFY_TIMEOUT_S = 5  # math_verify's own (signal) timeout, used in a main thread only
SCRIPTS = {  # unicodedata name prefixes of each script's letters
    "latin": ("LATIN",), "cyrillic": ("CYRILLIC",), "greek": ("GREEK",), "arabic": ("ARABIC",),
    "hebrew": ("HEBREW",), "devanagari": ("DEVANAGARI",),
    "cjk": ("CJK", "HIRAGANA", "KATAKANA", "HANGUL"),
}

# ---------------------------------------------------------------------------------------------
# answer extraction


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(end, content) of the last ``\\boxed{...}`` whose braces balance; linear time."""
    opens = [m.end() - 1 for m in re.finditer(r"\\boxed\s*\{", text)]
    if not opens:
        return None
    match, stack = {}, []
    for i in range(opens[0], len(text)):
        if text[i] == "{":
            stack.append(i)
        elif text[i] == "}" and stack:
            match[stack.pop()] = i
    for start in reversed(opens):
        if start in match:
            return match[start] + 1, text[start + 1 : match[start]]
    return None


def _last_answer_tag(text: str) -> tuple[int, str] | None:
    """(end, content) of the last complete ``<answer>...</answer>``."""
    close = text.rfind("</answer>")
    start = text.rfind("<answer>", 0, max(close, 0))
    if close < 0 or start < 0:
        return None
    return close + len("</answer>"), text[start + len("<answer>") : close]


def _answer_in(region: str) -> str | None:
    found = [x for x in (_last_boxed(region), _last_answer_tag(region)) if x is not None]
    if not found:
        return None
    answer = max(found)[1]
    inner = _last_boxed(answer)  # <answer>\boxed{3}</answer>
    answer = (inner[1] if inner else answer).strip()
    return answer or None


def extract_answer(completion: str) -> str | None:
    """The final answer of ``completion``: the last of ``\\boxed{...}`` / ``<answer>...</answer>``,
    looked for after the last ``</think>`` (None while a ``<think>`` is still open)."""
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    elif "<think>" in completion:
        return None
    return _answer_in(completion)


# ---------------------------------------------------------------------------------------------
# math answers: exact / numeric fast path, then math_verify

_NUMBER = re.compile(r"[+-]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+|\d+/\d+)", re.ASCII)


def _plain(answer: str) -> str:
    """Whitespace, LaTeX thin spaces, ``$`` and a final ``.`` removed (fast-path comparisons)."""
    return re.sub(r"\\[,!;: ]|\s", "", answer).strip("$").rstrip(".")


def _decimal_key(number: str) -> tuple[bool, str, str]:
    """(negative, integer digits, fraction digits) without padding zeros: any length."""
    whole, _, frac = number.lstrip("+-").partition(".")
    whole, frac = whole.lstrip("0"), frac.rstrip("0")
    return number.startswith("-") and bool(whole or frac), whole, frac


def _numbers_equal(pred: str, gold: str) -> bool | None:
    """Compare two plain numbers exactly; None when either is not one."""
    if not (_NUMBER.fullmatch(pred) and _NUMBER.fullmatch(gold)):
        return None
    pred, gold = pred.replace(",", ""), gold.replace(",", "")
    if "/" not in pred + gold:
        return _decimal_key(pred) == _decimal_key(gold)
    if max(len(pred), len(gold)) > 200:
        return None
    return Fraction(pred) == Fraction(gold)


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify  # lazy: pulls in sympy

    in_main = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if in_main else None  # signal.alarm works in main only
    gold_parsed = parse(f"\\boxed{{{gold.strip().strip('$')}}}", parsing_timeout=timeout)
    if all(isinstance(x, str) for x in gold_parsed):  # nothing, or only the raw text back
        raise ValueError(f"the reference answer {gold!r} cannot be parsed by math_verify")
    pred_parsed = parse(f"\\boxed{{{pred.strip().strip('$')}}}", parsing_timeout=timeout)
    return bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=timeout)


def answers_equal(pred: str, gold: str) -> bool:
    """Is the extracted answer ``pred`` equal to the reference ``gold``? Equal text or equal
    plain numbers (``42``, ``-3.50``, ``1,234``, ``3/4``; ASCII digits) decide without sympy;
    everything else goes to ``math_verify``. Raises ValueError if ``gold`` cannot be parsed."""
    if len(pred) > max(MAX_ANSWER_CHARS, 2 * len(gold)):
        return False
    p, g = _plain(pred), _plain(gold)
    if p == g:
        return True
    equal = _numbers_equal(p, g)
    return _math_verify(gold, pred) if equal is None else equal


# ---------------------------------------------------------------------------------------------
# reward components


def _countdown_meta(problem: Problem) -> tuple[list[int], int]:
    if "numbers" not in problem.meta or "target" not in problem.meta:
        raise ValueError(f"problem of task {problem.task!r} has no meta 'numbers' and 'target'")
    return problem.meta["numbers"], problem.meta["target"]


def accuracy(completion: str, problem: Problem) -> float:
    """1.0 when the final answer is correct, else 0.0 (no answer, unparsable or wrong)."""
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    if problem.task == "countdown":
        return float(check_countdown(pred, *_countdown_meta(problem)))
    return float(answers_equal(pred, problem.answer))


def countdown_reward(completion: str, problem: Problem) -> float:
    """TinyZero's Countdown score: 1.0 correct, COUNTDOWN_FORMAT_SCORE for any other answer,
    0.0 when there is no answer."""
    numbers, target = _countdown_meta(problem)
    pred = extract_answer(completion)
    if pred is None:
        return 0.0
    return 1.0 if check_countdown(pred, numbers, target) else COUNTDOWN_FORMAT_SCORE


def format_reward(completion: str, problem: Problem, *, think_prefilled: bool = False) -> float:
    """1.0 for ``<think>`` non-empty reasoning ``</think>`` then an answer (``\\boxed{}`` or
    ``<answer>``), with exactly one thinking block, at the start (leading whitespace allowed).
    With ``think_prefilled`` the prompt already ended in ``<think>``, so the completion must
    not open another one."""
    text = completion.lstrip()
    if not think_prefilled:
        if not text.startswith("<think>"):
            return 0.0
        text = text[len("<think>") :]
    if "<think>" in text or text.count("</think>") != 1:
        return 0.0
    reasoning, rest = text.split("</think>")
    return float(bool(reasoning.strip()) and _answer_in(rest) is not None)


def overlong_penalty(completion: str, problem: Problem, *, max_len: int, cache_len: int,
                     length: int | None = None) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_len - cache_len``, then linear down to
    -1 at ``max_len`` and -1 beyond. ``length`` is the token count (characters if None)."""
    if max_len <= 0 or not 0 <= cache_len <= max_len:
        raise ValueError(f"overlong: need 0 <= cache_len ({cache_len}) <= max_len ({max_len})")
    n = len(completion) if length is None else length
    if n <= max_len - cache_len:
        return 0.0
    if n > max_len:
        return -1.0
    return (max_len - cache_len - n) / cache_len


def language_consistency(completion: str, problem: Problem, *, script: str | None = None) -> float:
    """Share of the completion's letters that belong to ``script`` (default: the problem's
    ``meta["script"]``, else ``"latin"``); tags and LaTeX commands are ignored, no letters -> 1."""
    script = script or problem.meta.get("script", "latin")
    if script not in SCRIPTS:
        raise ValueError(f"script={script!r} is unknown; choose one of {sorted(SCRIPTS)}")
    text = re.sub(r"</?(?:think|answer)>|\\[A-Za-z]+", "", completion)
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 1.0
    hits = sum(unicodedata.name(ch, "").startswith(SCRIPTS[script]) for ch in letters)
    return hits / len(letters)


REWARDS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "format": format_reward,
    "countdown": countdown_reward,
    "overlong": overlong_penalty,
    "language": language_consistency,
}
_PRELOAD = {"accuracy": ("math_verify",)}  # imported when a worker starts, not on its first job

# ---------------------------------------------------------------------------------------------
# batch scoring


@dataclass
class RewardBatch:
    """Scores of B completions: ``components[name]`` and ``total`` are float64 arrays [B];
    ``errors`` / ``timeouts`` count the calls per component that scored 0 for that reason;
    ``messages`` holds the first few of their messages (``"name[i]: ..."``)."""

    components: dict[str, np.ndarray]
    total: np.ndarray
    errors: dict[str, int]
    timeouts: dict[str, int]
    messages: list[str]

    def metrics(self) -> dict[str, float]:
        """Flat means and counts for logging: ``reward/<name>``, ``reward/total``,
        ``reward_errors/<name>``, ``reward_timeouts/<name>``."""
        def mean(x: np.ndarray) -> float:
            return float(x.mean()) if x.size else 0.0

        out = {"reward/total": mean(self.total)}
        for name, values in self.components.items():
            out[f"reward/{name}"] = mean(values)
            out[f"reward_errors/{name}"] = float(self.errors[name])
            out[f"reward_timeouts/{name}"] = float(self.timeouts[name])
        return out


def _bind(name: str, options: dict) -> tuple[Callable[..., float], bool]:
    """REWARDS[name] with its options bound; and whether it takes ``length``."""
    if name not in REWARDS:
        raise ValueError(f"reward {name!r} is unknown; choose from {sorted(REWARDS)}")
    fn = REWARDS[name]
    params = inspect.signature(fn).parameters
    for key in options:
        if key not in params or params[key].kind != inspect.Parameter.KEYWORD_ONLY:
            raise ValueError(f"options[{name!r}][{key!r}] is not an option of {name}; "
                             f"it takes {[p for p in params if p != 'length'][2:]}")
    for p in params.values():
        needed = p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
        if needed and p.name != "length" and p.name not in options:
            raise ValueError(f"reward {name!r} needs options[{name!r}][{p.name!r}]")
    return functools.partial(fn, **options), "length" in params


class RewardSet:
    """Weighted sum of named reward components, scored in ``workers`` processes with a
    ``timeout_s`` limit per call (``workers=0`` runs in this process, with no hard limit).

    ``options`` maps a component to its keyword options, e.g.
    ``{"overlong": {"max_len": 1024, "cache_len": 256}, "format": {"think_prefilled": True}}``.
    Use as a context manager, or call ``close()``, to stop the workers.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float] | None = None,
                 timeout_s: float = 5.0, options: dict[str, dict] | None = None,
                 workers: int = 2) -> None:
        options = options or {}
        if not names or len(set(names)) != len(names):
            raise ValueError(f"names={list(names)} must be a non-empty list without repeats")
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"weights has {len(weights)} entries for {len(names)} names")
        if unknown := set(options) - set(names):
            raise ValueError(f"options for {sorted(unknown)}, which are not in names")
        if timeout_s <= 0 or workers < 0:
            raise ValueError(f"need timeout_s > 0 and workers >= 0 (got {timeout_s}, {workers})")
        self.names = list(names)
        self.weights = [1.0] * len(names) if weights is None else [float(w) for w in weights]
        self.timeout_s, self.workers = timeout_s, workers
        self._bound = {n: _bind(n, options.get(n, {})) for n in self.names}
        self._pool: WorkerPool | None = None

    def score(self, completions: Sequence[str], problems: Sequence[Problem],
              lengths: Sequence[int] | None = None) -> RewardBatch:
        """Score ``completions[i]`` against ``problems[i]``; ``lengths[i]`` (token counts) go to
        components that take ``length``. Never raises for a failing component."""
        if len(problems) != len(completions) or (lengths is not None
                                                 and len(lengths) != len(completions)):
            raise ValueError(f"{len(completions)} completions need as many problems "
                             f"({len(problems)}) and lengths")
        lens = [None] * len(completions) if lengths is None else [int(n) for n in lengths]
        jobs = [(fn, c, p, {"length": n} if takes else {})
                for c, p, n in zip(completions, problems, lens, strict=True)
                for fn, takes in self._bound.values()]
        return self._assemble(self._run(jobs), len(completions))

    def _run(self, jobs: list[Job]) -> list[Result]:
        if self.workers == 0:
            return [call_component(*job) for job in jobs]
        if self._pool is None:
            preload = (__name__, *sorted({m for n in self.names for m in _PRELOAD.get(n, ())}))
            self._pool = WorkerPool(self.workers, preload)
        return self._pool.run(jobs, self.timeout_s)

    def _assemble(self, results: list[Result], batch: int) -> RewardBatch:
        k = len(self.names)
        components, errors, timeouts, messages = {}, {}, {}, []
        for j, name in enumerate(self.names):
            column = results[j::k]
            components[name] = np.array([v if s == "ok" else 0.0 for s, v in column], np.float64)
            errors[name] = sum(s == "error" for s, _ in column)
            timeouts[name] = sum(s == "timeout" for s, _ in column)
            messages += [f"{name}[{i}]: {v}" for i, (s, v) in enumerate(column) if s != "ok"]
        total = sum((w * components[n] for n, w in zip(self.names, self.weights, strict=True)),
                    np.zeros(batch))
        if messages:
            log.warning("rewards: %d of %d calls failed (%d errors, %d timeouts); first: %s",
                        len(messages), len(results), sum(errors.values()),
                        sum(timeouts.values()), messages[0])
        return RewardBatch(components, total, errors, timeouts, messages[:20])

    def close(self) -> None:
        """Stop the worker processes (a later ``score`` starts new ones)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
