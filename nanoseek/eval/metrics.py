"""Evaluation metrics for verifiable tasks: pass@k, maj@k, per-problem records and aggregates.

Definitions (DeepSeek-R1 §3, "Evaluation Setup"; Chen et al. 2021 for pass@k):

* **pass@k** with ``n`` samples of which ``c`` are correct: the unbiased estimator
  ``1 - C(n-c, k) / C(n, k)``, the chance that a random k-subset of the samples holds a correct
  one, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (no huge binomials). pass@1 is then the
  mean correctness of the samples, R1's "pass@1".
* **maj@k** (R1's cons@64): the answers of the k samples are extracted and normalized
  (:func:`answer_key`), the most frequent one is the vote; samples without an answer do not
  vote. Ties are split: a problem whose top answers tie scores the share of them that are
  correct, the expected score of a uniformly random tie-break (so maj@k is deterministic).
* **format**: the share of samples that pass the ``format`` reward (``<think>`` ... ``</think>``
  then an answer); **truncated**: the share that hit ``max_tokens`` (``finish_reason ==
  "length"``).

Nothing here imports torch: records are plain data, filled in by ``nanoseek.eval.run``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from nanoseek.data.tasks import Problem
from nanoseek.rl.countdown import CountdownError, countdown_value
from nanoseek.rl.rewards import extract_answer

_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+|[+-]?\d+/\d+",
                     re.ASCII)
MAX_KEY_CHARS = 200  # longer answers are compared as text, never parsed as numbers


# ---------------------------------------------------------------------------------------------
# estimators


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for ``n`` samples with ``c`` correct: ``1 - C(n-c, k) / C(n, k)``.

    Evaluated as a product of ``k``-free factors in float64, stable for any ``n``."""
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"pass_at_k needs integers, got n={n!r}, c={c!r}, k={k!r}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct must be in [0, n={n}]")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k} must be in [1, n={n}]; draw at least k samples")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(keys: Sequence[str | None], correct: Sequence[bool]) -> tuple[str | None, float]:
    """Majority vote over answer keys (None = no answer, no vote).

    Returns ``(winner, score)``: the winner is the most frequent key (the first to appear among
    tied ones) and the score is the share of the tied top keys that are correct (a key is
    correct when the first sample giving it is). ``(None, 0.0)`` when no sample answered."""
    if len(keys) != len(correct):
        raise ValueError(f"majority_vote: {len(keys)} keys but {len(correct)} correctness flags")
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return None, 0.0
    top = max(counts.values())
    tied = [key for key in counts if counts[key] == top]  # Counter keeps first-seen order
    first_correct = {}
    for key, ok in zip(keys, correct, strict=True):
        first_correct.setdefault(key, bool(ok))
    return tied[0], sum(first_correct[key] for key in tied) / len(tied)


def length_summary(lengths: Sequence[int]) -> dict[str, float | int | None]:
    """``{"count", "mean", "median", "p90", "max"}`` of token counts (None when empty)."""
    if not lengths:
        return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
    x = np.asarray(lengths, dtype=np.float64)
    return {"count": int(x.size), "mean": float(x.mean()), "median": float(np.median(x)),
            "p90": float(np.percentile(x, 90)), "max": int(x.max())}


# ---------------------------------------------------------------------------------------------
# answer normalization


def normalize_answer(answer: str) -> str:
    """A canonical form for voting: whitespace, LaTeX spacing, ``$`` and a final ``.`` removed;
    plain numbers (``1,234``, ``-3.50``, ``06``, ``6/8``) become reduced fractions' text."""
    text = re.sub(r"\\[,!;: ]|\s", "", answer).rstrip(".").strip("$").rstrip(".")
    if len(text) <= MAX_KEY_CHARS and _NUMBER.fullmatch(text):
        return str(Fraction(text.replace(",", "")))
    return text


def answer_key(completion: str, problem: Problem) -> str | None:
    """The voting key of ``completion``'s final answer, or None when it has none.

    Countdown answers that use the numbers correctly vote for their value (``"=26"``), so all
    correct expressions agree; others vote with their normalized text."""
    pred = extract_answer(completion)
    if pred is None:
        return None
    if problem.task == "countdown" and "numbers" in problem.meta:
        try:
            return f"={countdown_value(pred, problem.meta['numbers'])}"
        except (CountdownError, RecursionError):
            pass
    return normalize_answer(pred)


# ---------------------------------------------------------------------------------------------
# records and aggregation


@dataclass
class ProblemRecord:
    """Everything measured on one problem. Lists have one entry per sample: ``answers`` the
    extracted answer (None if none), ``keys`` its voting key, ``lengths`` the token counts,
    ``correct`` / ``formatted`` the accuracy / format rewards as bools. ``greedy_*`` are None
    when greedy decoding was not run."""

    prompt: str
    answer: str
    task: str
    completions: list[str] = field(default_factory=list)
    answers: list[str | None] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    formatted: list[bool] = field(default_factory=list)
    greedy_completion: str | None = None
    greedy_answer: str | None = None
    greedy_correct: bool | None = None
    greedy_length: int | None = None

    @property
    def num_samples(self) -> int:
        return len(self.correct)

    @property
    def num_correct(self) -> int:
        return sum(self.correct)

    def majority(self) -> tuple[str | None, float]:
        """(winning key, maj@k score) over this record's samples."""
        return majority_vote(self.keys, self.correct)

    def to_dict(self, completions: bool = True) -> dict[str, Any]:
        """JSON-ready dict; ``completions=False`` leaves the generated texts out."""
        out = asdict(self)
        winner, score = self.majority()
        out.update(num_correct=self.num_correct, majority_key=winner, majority_score=score)
        if not completions:
            out.pop("completions")
            out.pop("greedy_completion")
        return out


def default_ks(samples: int) -> list[int]:
    """The k of pass@k to report for ``samples`` per problem: 1, 2, 4, ... and ``samples``."""
    ks = [2**i for i in range(samples.bit_length()) if 2**i <= samples]
    return ks if ks[-1] == samples else [*ks, samples]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def aggregate(records: Sequence[ProblemRecord], ks: Sequence[int] | None = None,
              samples: int | None = None) -> dict[str, Any]:
    """Dataset metrics over ``records`` (every record must have the same number of samples;
    ``samples`` names it when there may be no records).

    Keys: ``num_problems``, ``samples``, ``pass@{k}`` for each ``k`` in ``ks`` (default
    :func:`default_ks`), ``maj@{samples}``, ``greedy`` (None without greedy runs),
    ``format_rate``, ``truncated_rate``, ``mean_response_tokens``; None where undefined (no
    records)."""
    sizes = {r.num_samples for r in records}
    if len(sizes) > 1:
        raise ValueError(f"records have different sample counts {sorted(sizes)}; "
                         "aggregate groups with the same number of samples")
    n = sizes.pop() if sizes else (samples or 0)
    if samples is not None and n != samples:
        raise ValueError(f"records have {n} samples each, not samples={samples}")
    ks = list(ks) if ks is not None else (default_ks(n) if n else [])
    if bad := [k for k in ks if not 1 <= k <= max(n, 1)]:
        raise ValueError(f"ks={bad} outside [1, samples={n}]; draw at least k samples")
    out: dict[str, Any] = {"num_problems": len(records), "samples": n}
    for k in ks:
        out[f"pass@{k}"] = _mean([pass_at_k(n, r.num_correct, k) for r in records])
    out[f"maj@{n}"] = _mean([r.majority()[1] for r in records])
    greedy = [r.greedy_correct for r in records if r.greedy_correct is not None]
    out["greedy"] = _mean([float(g) for g in greedy])
    samples = [(f, reason, length) for r in records
               for f, reason, length in zip(r.formatted, r.finish_reasons, r.lengths, strict=True)]
    out["format_rate"] = _mean([float(f) for f, _, _ in samples])
    out["truncated_rate"] = _mean([float(reason == "length") for _, reason, _ in samples])
    out["mean_response_tokens"] = _mean([length for _, _, length in samples])
    return out
