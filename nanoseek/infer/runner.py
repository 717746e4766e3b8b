"""The model runner: turns scheduled sequences into one batched forward over the paged cache.

Two layouts (``Layout``):

* **packed** (prefill): the new tokens of every sequence side by side in one row ``[1, N]``;
  keys are every sequence's whole context (cached prefix + new tokens) side by side ``[1, S]``,
  with a block-diagonal causal ``attn_mask [1, 1, N, S]``. No padding is computed.
* **padded** (decode / speculative verify / MTP draft): one row per sequence ``[B, T]``;
  keys ``[B, S]`` with ``S`` the longest context; padding keys read the null block and are
  masked, padding queries write to it.

Prefill uses MLA's expanded path (compute-friendly), decode its absorbed path (attends over the
cached latent itself). ``reference_generate`` is the plain no-cache full-recompute generator the
tests hold the engine equal to.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch
from torch import nn

from nanoseek.infer.cache import KVCacheStorage, LatentCacheStorage


@dataclass
class Layout:
    """One forward's inputs besides the token ids (all on the model's device).

    ``position_ids [B, T]``, ``slot_mapping [B*T]`` (write slot of each query token),
    ``gather_BS`` (slots each row reads), ``attn_mask [B, 1, T, S]`` (bool, True = attend).
    """

    position_ids: torch.Tensor
    slot_mapping: torch.Tensor
    gather_BS: torch.Tensor
    attn_mask: torch.Tensor


def _slots(table: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slots of token ``positions`` for a block ``table`` (any matching shapes)."""
    return table.gather(-1, positions // block_size) * block_size + positions % block_size


class ModelRunner:
    """Owns nothing but references: the model, its cache storage and the block size."""

    def __init__(self, model: nn.Module, storage: LatentCacheStorage | KVCacheStorage,
                 block_size: int) -> None:
        self.model, self.storage, self.block_size = model, storage, block_size
        self.device = next(model.parameters()).device

    def _tensor(self, data) -> torch.Tensor:
        return torch.tensor(data, dtype=torch.long, device=self.device)

    # ---------------------------------------------------------------- layouts
    def packed(self, tables: Seq[list[int]], starts: Seq[int], counts: Seq[int]) -> Layout:
        """Sequence ``i`` computes positions ``starts[i] .. starts[i] + counts[i] - 1``."""
        q_pos, k_pos, q_seq, k_seq, slots, gather = [], [], [], [], [], []
        for i, (table, start, n) in enumerate(zip(tables, starts, counts, strict=True)):
            table_t = self._tensor(table)
            keys = torch.arange(start + n, device=self.device)
            q_pos.append(keys[start:])
            k_pos.append(keys)
            q_seq.append(torch.full((n,), i, device=self.device))
            k_seq.append(torch.full((start + n,), i, device=self.device))
            key_slots = _slots(table_t, keys, self.block_size)
            slots.append(key_slots[start:])
            gather.append(key_slots)
        qp, kp, qs, ks = (torch.cat(x) for x in (q_pos, k_pos, q_seq, k_seq))
        mask = (qs[:, None] == ks[None, :]) & (kp[None, :] <= qp[:, None])
        return Layout(qp[None], torch.cat(slots), torch.cat(gather)[None], mask[None, None])

    def padded(self, tables: Seq[list[int]], starts: Seq[int], counts: Seq[int],
               width: int) -> Layout:
        """Row ``i`` computes positions ``starts[i] ..`` for ``counts[i] <= width`` queries;
        the rest of the row is padding (it repeats the last real query, writes to slot 0)."""
        b, nb = len(tables), max(len(t) for t in tables)
        table_BN = self._tensor([list(t) + [0] * (nb - len(t)) for t in tables])
        start_B1 = self._tensor(starts)[:, None]
        count_B1 = self._tensor(counts)[:, None]
        offset_T = torch.arange(width, device=self.device)[None, :]
        q_pos_BT = start_B1 + torch.minimum(offset_T, count_B1 - 1)
        s = int(max(st + c for st, c in zip(starts, counts, strict=True)))
        k_pos_S = torch.arange(s, device=self.device)
        gather_BS = _slots(table_BN, k_pos_S.expand(b, s), self.block_size)
        slots_BT = _slots(table_BN, q_pos_BT, self.block_size)
        slots_BT = torch.where(offset_T < count_B1, slots_BT, torch.zeros_like(slots_BT))
        mask = k_pos_S[None, None, :] <= q_pos_BT[:, :, None]
        return Layout(q_pos_BT, slots_BT.reshape(-1), gather_BS, mask[:, None])

    # ---------------------------------------------------------------- forwards
    def hidden(self, input_ids: torch.Tensor, layout: Layout, attn_impl: str) -> torch.Tensor:
        """The decoder stack over the paged cache → hidden states ``[B, T, D]`` (pre-norm for
        DeepSeek, normed for dense models; ``logits`` accepts either)."""
        view = self.storage.view(layout.slot_mapping, layout.gather_BS)
        return self.model.forward_hidden(input_ids, layout.position_ids, layout.attn_mask,
                                         cache=view, attn_impl=attn_impl)

    def logits(self, h_ND: torch.Tensor) -> torch.Tensor:
        """Hidden rows ``[..., D]`` → fp32 logits ``[..., V]``."""
        return self.model.logits_from_hidden(h_ND).float()

    def mtp(self, h_BTD: torch.Tensor, next_ids: torch.Tensor, layout: Layout,
            attn_impl: str) -> torch.Tensor:
        """MTP depth 1 at the layout's positions (hidden ``h_BTD``, tokens ``next_ids`` one
        ahead) → its hidden states ``[B, T, D]`` (see ``mtp_logits``)."""
        view = self.storage.view(layout.slot_mapping, layout.gather_BS)
        return self.model.mtp_step(h_BTD, next_ids, layout.position_ids, layout.attn_mask,
                                   cache=view, attn_impl=attn_impl)

    def mtp_logits(self, h_ND: torch.Tensor) -> torch.Tensor:
        """MTP hidden rows ``[..., D]`` → fp32 draft logits ``[..., V]``."""
        return self.model.mtp_logits(h_ND).float()


@torch.inference_mode()
def reference_generate(model: nn.Module, prompt_ids: Seq[int], max_new_tokens: int,
                       eos_token_ids: Seq[int] = ()) -> list[int]:
    """Greedy decoding by full recompute: no cache, one plain ``forward`` per new token.

    The reference the engine's fast paths (paged cache, batching, prefix cache, speculative
    decoding) are tested against. Returns the generated ids (stops after an EOS id)."""
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids], device=device)).logits[0, -1]
        token = int(logits.float().argmax())
        out.append(token)
        ids.append(token)
        if token in eos_token_ids:
            break
    return out
