"""Distillation of a teacher's reasoning into small dense Llama / Qwen2 students (R1 §2.4).

- ``run.py``: ``nanoseek distill`` (``main(argv)``), ``run_distill(cfg) -> DistillResult``:
  traces → teacher top-k → SFT (+ logit KD) → optional on-policy → HF student dir.
- ``traces.py``: verified teacher traces (``generate_traces``, over
  ``nanoseek.rl.sample.rejection_sample``) and the teacher's top-k log-probs on them
  (``score_traces``, ``TeacherTopK``).
- ``kd.py``: forward KL / reverse KL / generalized JSD against top-k log-probs, tail handled.
- ``onpolicy.py``: the student samples, the teacher scores its tokens (``OnPolicySource``).

Names below are imported lazily.
"""

from __future__ import annotations

from nanoseek._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "DistillConfig": "nanoseek.distill.run",
    "DistillResult": "nanoseek.distill.run",
    "run_distill": "nanoseek.distill.run",
    "TeacherTopK": "nanoseek.distill.traces",
    "generate_traces": "nanoseek.distill.traces",
    "score_traces": "nanoseek.distill.traces",
    "topk_kd_loss": "nanoseek.distill.kd",
    "OnPolicySource": "nanoseek.distill.onpolicy",
}


__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
