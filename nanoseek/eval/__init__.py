"""Evaluation on verifiable tasks: pass@k / maj@k metrics (``metrics``) and the ``nanoseek eval``
stage with its Python API ``evaluate`` (``run``)::

    from nanoseek.eval import evaluate
    result = evaluate("out/r1", problems, samples=8)
    print(result.to_markdown())

Importing this package does not import torch; the engine is loaded when a model is.
"""

from __future__ import annotations

from nanoseek.eval.metrics import (
    ProblemRecord,
    aggregate,
    answer_key,
    majority_vote,
    normalize_answer,
    pass_at_k,
)
from nanoseek.eval.run import EvalResult, Generator, build_prompts, evaluate, load_problems

__all__ = [
    "EvalResult",
    "Generator",
    "ProblemRecord",
    "aggregate",
    "answer_key",
    "build_prompts",
    "evaluate",
    "load_problems",
    "majority_vote",
    "normalize_answer",
    "pass_at_k",
]
