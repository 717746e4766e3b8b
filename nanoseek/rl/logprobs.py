"""Per-token log-probabilities of given tokens: the one helper GRPO uses for the policy, the old
policy and the reference model, so the three can never drift apart.

Rules (each a classic silent GRPO bug when broken, see ``/work/shared/reference/rl.md`` §7-8):

* logits are divided by the **sampling temperature** before the softmax, so the importance ratio
  compares the distribution the tokens were actually drawn from (the engine's
  ``logprobs_mode="processed"`` log-probs, for samples without top-k / top-p truncation);
* the softmax runs in **float32** at least (float64 stays float64), even under bf16 autocast;
* position ``t`` of the logits scores token ``t + 1`` (the shift is done here, once).

Sequences are **right-padded** ``[prompt | completion | pad]`` rows, so positions are ``0..T-1``
in every row, exactly as the inference engine numbers them; no attention mask is needed because
the causal mask already keeps real tokens from seeing the padding after them.
"""

from __future__ import annotations

import torch
from torch import nn


def _wide(logits: torch.Tensor) -> torch.Tensor:
    """``logits`` in float32, or float64 if they already are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def token_logprobs(logits_BTV: torch.Tensor, targets_BT: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)[target]`` per position → ``[B, T]`` (float32+).

    Memory-light: gathers the target logit and subtracts the log-sum-exp, never materialising
    the full ``[B, T, V]`` log-softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: log-probs need a sampling temperature > 0")
    scaled = _wide(logits_BTV) / temperature
    picked = scaled.gather(-1, targets_BT.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(scaled, dim=-1)


@torch.no_grad()
def token_entropy(logits_BTV: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits / temperature)`` per position → ``[B, T]`` (no grad)."""
    logp = torch.log_softmax(_wide(logits_BTV) / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def sequence_logprobs(model: nn.Module, input_ids_BT: torch.Tensor, temperature: float = 1.0,
                      with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of every next token of right-padded rows: ``[B, T-1]`` where entry ``t`` is
    ``log p(input_ids[:, t + 1] | input_ids[:, :t + 1])`` at ``temperature``.

    Returns ``(logp_BT, entropy_BT or None)``; gradients flow into ``logp`` when enabled. The
    caller masks the positions that are not completion tokens.
    """
    logits = model(input_ids_BT[:, :-1]).logits
    logp = token_logprobs(logits, input_ids_BT[:, 1:], temperature)
    entropy = token_entropy(logits, temperature) if with_entropy else None
    return logp, entropy
