"""MTP speculative decoding: draft one token with the MTP module, verify it in one forward.

State of a running sequence with tokens ``t_0..t_m``: the main cache holds positions
``0..m-1``; the MTP layer's cache holds its own stream up to position ``m-1``, where position
``j`` is ``MTP(h_j, t_{j+1})`` (h = main hidden state, pre-norm) — its output at ``m-1`` gave
the draft ``d`` for ``t_{m+1}`` (with its distribution ``q`` when sampling).

A step (``MTPSpeculator.decode``), batched over all running sequences:

1. verify: the main model over ``[t_m, d]`` at positions ``m, m+1`` (absorbed MLA) gives the
   target rows ``p_m`` (for ``d``) and ``p_{m+1}`` (bonus);
2. accept (``sampling.speculative_accept``; greedy rows: accept iff ``d`` is the argmax):
   emit ``[d, b ~ p_{m+1}]`` or ``[r]`` with ``r`` from the residual — every emitted token is
   distributed as plain decoding's, and greedy output is identical. A rejected ``d``'s cache
   slot is simply overwritten later (the sequence's computed length excludes it);
3. draft: the MTP module over stream positions ``m`` (and ``m+1`` if ``d`` was accepted)
   gives the next draft.

Prefill runs the MTP stream over the prompt (its last position needs the sampled first token,
so it runs after sampling). Note: a prefix-cache hit of ``c`` tokens reuses MTP entries too;
the one at position ``c-1`` was built with the cached request's token ``c``, which may differ
— that lowers the acceptance rate and never changes greedy outputs or the distribution a
sample is drawn from. It does change *which* tokens a seeded sample draws (the draft and
the accept/residual draws differ), as does a preemption (the draft is dropped and drawn
again): with speculation, a seeded request at T > 0 is reproducible only when it runs with
the same cache contents and no preemption; without speculation, whatever else ran.
"""

from __future__ import annotations

import torch

from nanoseek.infer.runner import Layout
from nanoseek.infer.sampling import (
    process_logits,
    sample,
    speculative_accept,
    speculative_accept_greedy,
)
from nanoseek.infer.scheduler import Batch, Sequence


class MTPSpeculator:
    """Drafts with MTP depth 1 and verifies; counts drafts and acceptances."""

    def __init__(self, engine) -> None:
        self.engine, self.runner = engine, engine.runner
        self.num_drafts = self.num_accepted = self.num_steps = self.num_emitted = 0

    def stats(self) -> dict[str, float]:
        rate = self.num_accepted / self.num_drafts if self.num_drafts else 0.0
        per_step = self.num_emitted / self.num_steps if self.num_steps else 0.0
        return {"spec_drafts": self.num_drafts, "spec_accepted": self.num_accepted,
                "spec_acceptance_rate": rate, "spec_tokens_per_seq_step": per_step}

    # ---------------------------------------------------------------- prefill
    def prefill(self, batch: Batch, starts: list[int], h_ND: torch.Tensor, layout: Layout,
                done: list[int], finished: list[Sequence]) -> None:
        """Run the MTP stream over the prefilled positions; draft for finished prefills."""
        next_ids = []
        for seq, start, n in zip(batch.seqs, starts, batch.num_new, strict=True):
            nxt = seq.token_ids[start + 1 : start + n + 1]
            assert len(nxt) == n, "MTP prefill needs the token after every position"
            next_ids += nxt
        ids = torch.tensor([next_ids], device=self.runner.device)
        h_mtp = self.runner.mtp(h_ND[None], ids, layout, "expanded")[0]
        offsets = [sum(batch.num_new[: i + 1]) - 1 for i in range(len(batch.seqs))]
        live = [i for i in done if batch.seqs[i] not in finished]
        if live:
            self._draft([batch.seqs[i] for i in live], h_mtp[[offsets[i] for i in live]])

    def _draft(self, seqs: list[Sequence], h_ND: torch.Tensor) -> None:
        """Sample each sequence's next draft from its MTP hidden row (same processing as
        plain sampling, from the sequence's own generator)."""
        logits = self.runner.mtp_logits(h_ND)
        states = [s.sampler for s in seqs]
        tokens = sample(logits, states).token_ids.tolist()
        probs = None
        if not all(st.params.greedy for st in states):
            probs = process_logits(logits, states).softmax(dim=-1)
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            q = None if seq.sampler.params.greedy or probs is None else probs[i]
            seq.draft = (token, q)

    # ---------------------------------------------------------------- decode
    def decode(self, batch: Batch, finished: list[Sequence]) -> None:
        """Verify every running sequence's draft, emit 1-2 tokens each, draft again."""
        seqs = batch.seqs
        starts = [s.num_computed_tokens for s in seqs]
        drafts = [s.draft[0] if s.draft is not None else None for s in seqs]
        rows = [[s.token_ids[-1], s.token_ids[-1] if d is None else d]
                for s, d in zip(seqs, drafts, strict=True)]
        counts = [1 if d is None else 2 for d in drafts]
        layout = self.runner.padded([s.block_table for s in seqs], starts, counts, 2)
        h_BTD = self.runner.hidden(torch.tensor(rows, device=self.runner.device), layout,
                                   "absorbed")
        logits_BTV = self.runner.logits(h_BTD)
        emitted = self._verify(seqs, drafts, logits_BTV)
        live, mtp_counts, mtp_next = [], [], []
        for i, (seq, tokens) in enumerate(zip(seqs, emitted, strict=True)):
            seq.draft = None
            ended = self._append(seq, tokens, logits_BTV[i], finished)
            seq.num_computed_tokens = starts[i] + len(tokens)  # t_m and the accepted drafts
            self.engine.blocks.register(seq)  # after the append: blocks hold final tokens
            if not ended:
                live.append(i)
                mtp_counts.append(len(tokens))
                mtp_next.append(tokens + tokens[-1:] if len(tokens) == 1 else tokens)
        if live:
            self._mtp_decode([seqs[i] for i in live], [starts[i] for i in live], mtp_counts,
                             mtp_next, h_BTD[live])

    def _verify(self, seqs: list[Sequence], drafts: list[int | None],
                logits_BTV: torch.Tensor) -> list[list[int]]:
        """Tokens to emit per sequence (accepted drafts, then one target token)."""
        b, _, v = logits_BTV.shape
        states = [s.sampler for s in seqs for _ in range(2)]
        pending = [p for d in drafts for p in ([], [] if d is None else [d])]
        processed = process_logits(logits_BTV.reshape(2 * b, v), states, pending).view(b, 2, v)
        out: list[list[int]] = []
        for i, (seq, d) in enumerate(zip(seqs, drafts, strict=True)):
            state = seq.sampler
            if d is None:  # no draft (e.g. after a chunked prefill): a plain sample
                out.append(sample(logits_BTV[i, :1], [state]).token_ids.tolist())
                continue
            if state.params.greedy:
                tokens, n_acc = speculative_accept_greedy(processed[i, :1], [d], processed[i, 1])
            else:
                p = processed[i].softmax(dim=-1)
                q = seq.draft[1][None] if seq.draft[1] is not None else None
                tokens, n_acc = speculative_accept(p[:1], q, [d], p[1],
                                                   state.generator(p.device))
            self.num_drafts += 1
            self.num_accepted += n_acc
            out.append(tokens)
        self.num_steps += len(seqs)
        self.num_emitted += sum(len(t) for t in out)
        return out

    def _append(self, seq: Sequence, tokens: list[int], logits_TV: torch.Tensor,
                finished: list[Sequence]) -> bool:
        """Append the emitted tokens (stopping early if one ends the sequence)."""
        want = seq.logprobs is not None
        logprobs_TV = self._logprobs(seq, logits_TV, tokens) if want else None
        for j, token in enumerate(tokens):
            entry = None
            if logprobs_TV is not None:
                entry = {token: float(logprobs_TV[j, token])}
                k = seq.sampler.params.logprobs or 0
                if k:
                    values, ids = logprobs_TV[j].topk(k)
                    entry.update(zip(ids.tolist(), values.tolist(), strict=True))
            if self.engine.append_token(seq, token, entry, finished):
                return True
        return False

    def _logprobs(self, seq: Sequence, logits_TV: torch.Tensor,
                  tokens: list[int]) -> torch.Tensor:
        """Log-probs of the two target rows (raw, or of the processed distribution)."""
        if self.engine.logprobs_mode == "raw":
            return logits_TV.log_softmax(dim=-1)
        state = seq.sampler
        return process_logits(logits_TV, [state, state], [[], tokens[:1]]).log_softmax(dim=-1)

    def _mtp_decode(self, seqs: list[Sequence], starts: list[int], counts: list[int],
                    next_ids: list[list[int]], h_BTD: torch.Tensor) -> None:
        """Extend the MTP stream by 1-2 positions per sequence and draft again."""
        layout = self.runner.padded([s.block_table for s in seqs], starts, counts, 2)
        ids = torch.tensor(next_ids, device=self.runner.device)
        h_mtp = self.runner.mtp(h_BTD, ids, layout, "absorbed")
        last = torch.tensor(counts, device=h_mtp.device) - 1
        self._draft(seqs, h_mtp[torch.arange(len(seqs), device=h_mtp.device), last])
