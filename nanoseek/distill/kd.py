"""Token-level knowledge-distillation losses against a teacher's stored top-k log-probs.

The teacher is not run during student training: for every trainable target position the
traces hold its K most likely next tokens ``ids [N, K]`` and their log-probs ``lp [N, K]``
(full-softmax log-probs at temperature 1, see ``nanoseek.distill.traces``). The student has
full logits ``[N, V]``.

**The tail.** The teacher's mass outside its top-k, ``r_p = 1 − Σ_k exp(lp_k)``, is not stored
token by token, so every divergence is computed between the two **(K+1)-bucket**
distributions over the partition {each of the teacher's top-k tokens, "every other token"}:

    p = (p_1 … p_K, r_p),   q = (q(id_1) … q(id_K), r_q),   r_q = Σ_{v ∉ top-k} q(v)

with ``q`` the student's full softmax (``log r_q`` is an exact logsumexp over the other
logits). This equals the full-vocabulary divergence when the top-k holds all the teacher's
mass and is a lower bound otherwise (coarse-graining never increases an f-divergence); the
tail bucket keeps the loss a proper divergence (≥ 0, 0 iff the buckets agree) and stops the
student from dumping mass outside the top-k for free. ``r_p`` is floored at ``TAIL_FLOOR``
(1e-12): float32 top-k log-probs can sum to ≥ 1 by rounding, and a zero tail would make the
reverse KL infinite.

Losses per position (``p`` teacher, ``q`` student, sums over the K+1 buckets):

* ``forward_kl``: Σ p log(p/q) — mode-covering (Hinton KD at T = 1; sequence-level SFT is its
  one-hot special case);
* ``reverse_kl``: Σ q log(q/p) — mode-seeking (MiniLLM; on-policy distillation);
* ``jsd``: generalized JSD (GKD, Agarwal et al. 2023): ``β·KL(p‖m) + (1−β)·KL(q‖m)`` with
  ``m = β·p + (1−β)·q``; ``β = 0`` is forward KL and ``β = 1`` reverse KL (as TRL's
  ``generalized_jsd_loss`` special-cases them).

All math runs in float32 (float64 inputs stay float64); terms with zero weight are exactly 0.
"""

from __future__ import annotations

import math

import torch

KD_LOSSES = ("forward_kl", "reverse_kl", "jsd")
TAIL_FLOOR = 1e-12


def check_kd(kind: str, beta: float, weight: float = 0.0) -> None:
    """``ValueError`` naming the field for an unknown loss, β outside [0, 1] or a weight
    outside [0, 1]."""
    if kind not in KD_LOSSES:
        raise ValueError(f"kd.loss: {kind!r} is unknown; use one of {', '.join(KD_LOSSES)}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"kd.beta: {beta} must be in [0, 1] (0 = forward KL, 1 = reverse KL)")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"kd.weight: {weight} must be in [0, 1] (loss = (1 - w)·CE + w·KD)")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, stable at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def bucket_logprobs(student_logits_NV: torch.Tensor, teacher_ids_NK: torch.Tensor,
                    teacher_logprobs_NK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the K+1 buckets (top-k tokens, then the tail): teacher ``log p [N, K+1]``
    and student ``log q [N, K+1]`` (see the module docstring)."""
    dtype = _compute_dtype(student_logits_NV)
    lq_NV = student_logits_NV.to(dtype).log_softmax(-1)
    ids = teacher_ids_NK.long()
    lq_NK = lq_NV.gather(1, ids)
    lp_NK = teacher_logprobs_NK.to(dtype)
    if ids.shape[1] >= lq_NV.shape[1]:  # the top-k is the whole vocabulary: no tail
        return lp_NK, lq_NK
    lq_tail = lq_NV.scatter(1, ids, float("-inf")).logsumexp(-1, keepdim=True)
    head = lp_NK.logsumexp(-1, keepdim=True).clamp(max=0.0)
    lp_tail = log1mexp(head).clamp(min=math.log(TAIL_FLOOR))
    return torch.cat([lp_NK, lp_tail], -1), torch.cat([lq_NK, lq_tail], -1)


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``Σ a log(a/b)`` over the last dim, from log-probs; buckets with ``a = 0`` add 0."""
    a = log_a.exp()
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(a))  # no 0·inf, no NaN grads
    return (a * diff).sum(-1)


def divergence(log_p: torch.Tensor, log_q: torch.Tensor, kind: str = "forward_kl",
               beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence ``[N]`` between teacher ``log_p`` and student ``log_q`` ``[N, B]``."""
    check_kd(kind, beta)
    if kind == "forward_kl" or (kind == "jsd" and beta == 0.0):
        return kl(log_p, log_q)
    if kind == "reverse_kl" or (kind == "jsd" and beta == 1.0):
        return kl(log_q, log_p)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1.0 - beta))
    return beta * kl(log_p, log_m) + (1.0 - beta) * kl(log_q, log_m)


def topk_kd_loss(student_logits_NV: torch.Tensor, teacher_ids_NK: torch.Tensor,
                 teacher_logprobs_NK: torch.Tensor, kind: str = "forward_kl",
                 beta: float = 0.5) -> torch.Tensor:
    """Per-position KD loss ``[N]`` of the student's logits against the teacher's top-k."""
    log_p, log_q = bucket_logprobs(student_logits_NV, teacher_ids_NK, teacher_logprobs_NK)
    return divergence(log_p, log_q, kind, beta)
