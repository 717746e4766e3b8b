"""Paged KV caches and the block manager (free list, ref counts, prefix cache, LRU eviction).

Memory is cut into ``num_blocks`` blocks of ``block_size`` token slots; slot ``s`` lives in block
``s // block_size``. Block 0 is the *null block*: never handed out, it absorbs the writes of
padding queries and pads the gathers (those keys are masked), so no code path needs a branch
for padding.

* ``LatentCacheStorage`` (MLA): per layer ``[num_blocks, block_size, kv_lora_rank + rope_dim]``
  — one normed latent ``c_kv`` and one rotated ``k_pe`` per token, 576 values for V3.
* ``KVCacheStorage`` (dense GQA): per layer K and V ``[num_blocks, block_size, K * d]``.

For one forward the runner makes a *view* (``PagedLatentView`` / ``PagedKVView``) holding the
slot of every new token (``slot_mapping [B*T]``) and the slots each query row may read
(``gather_BS``); the model calls ``view.update(layer_idx, new_a, new_b)``, which writes the new
tokens into their slots and returns the gathered, padded per-row keys (the runner's
``attn_mask [B, 1, T, S]`` hides padding).

Prefix cache (as in nano-vllm / vLLM): a *full* block is keyed by a hash chained over its
tokens and its parent's hash; blocks of finished or preempted sequences keep their key while
their ref count is 0 and sit in an LRU queue, evicted only when no never-cached block is free.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence

import torch

NULL_BLOCK = 0


def block_hash(parent: int | None, token_ids: Sequence[int]) -> int:
    """64-bit key of a full block: blake2b over the parent key and the block's tokens."""
    h = hashlib.blake2b(digest_size=8)
    h.update((parent or 0).to_bytes(8, "little", signed=False))
    h.update(b"".join(int(t).to_bytes(4, "little", signed=False) for t in token_ids))
    return int.from_bytes(h.digest(), "little")


class BlockManager:
    """Hands out blocks, counts references, and keeps a hash → block prefix cache.

    Per sequence the manager reads/writes ``seq.block_table`` (block ids, in order),
    ``seq.block_hashes`` (keys of its registered full blocks) and ``seq.token_ids``.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 2:
            raise ValueError(f"num_blocks: need at least 2 (block 0 is reserved), got {num_blocks}")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_count = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.tokens_of: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free: deque[int] = deque(range(1, num_blocks))  # never cached, or evicted
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, ref 0, LRU first

    # ---------------------------------------------------------------- accounting
    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be handed out now (free + evictable cached ones)."""
        return len(self.free) + len(self.evictable)

    def blocks_needed(self, seq, num_tokens: int) -> int:
        """More blocks ``seq`` needs so its table covers ``num_tokens`` token slots."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def _take(self) -> int:
        if self.free:
            block = self.free.popleft()
        else:
            block, _ = self.evictable.popitem(last=False)
            key = self.hash_of[block]
            if key is not None and self.hash_to_block.get(key) == block:
                del self.hash_to_block[key]
            self.hash_of[block], self.tokens_of[block] = None, None
        self.ref_count[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.ref_count[block] -= 1
        assert self.ref_count[block] >= 0, f"block {block} released twice"
        if self.ref_count[block] == 0:
            if self.hash_of[block] is not None:
                self.evictable[block] = None
            else:
                self.free.append(block)

    # ---------------------------------------------------------------- sequences
    def match_prefix(self, seq) -> int:
        """Attach the cached full blocks that start ``seq`` (its table must be empty).

        Only blocks inside ``token_ids[:-1]`` are matched, so at least one token is left to
        compute (its logits are needed). Returns the number of tokens served from the cache.
        """
        assert not seq.block_table, "match_prefix on a sequence that already holds blocks"
        seq.block_hashes = []
        if not self.enable_prefix_caching:
            return 0
        bs, parent = self.block_size, None
        for i in range((len(seq.token_ids) - 1) // bs):
            chunk = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            key = block_hash(parent, chunk)
            block = self.hash_to_block.get(key)
            if block is None or self.tokens_of[block] != chunk:
                break
            if self.ref_count[block] == 0:
                self.evictable.pop(block)
            self.ref_count[block] += 1
            seq.block_table.append(block)
            seq.block_hashes.append(key)
            parent = key
        return len(seq.block_table) * bs

    def allocate(self, seq, num_tokens: int) -> bool:
        """Grow ``seq.block_table`` to cover ``num_tokens`` slots; False (nothing taken) if
        there are not enough blocks."""
        need = self.blocks_needed(seq, num_tokens)
        if need > self.num_free_blocks:
            return False
        seq.block_table.extend(self._take() for _ in range(need))
        return True

    def register(self, seq) -> None:
        """Key every full block of ``seq`` whose tokens are all computed (so later requests
        with the same prefix can reuse it)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            chunk = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            key = block_hash(parent, chunk)
            seq.block_hashes.append(key)
            block = seq.block_table[i]
            if key in self.hash_to_block or self.hash_of[block] is not None:
                continue  # an equal block is cached already; keep the first
            self.hash_of[block], self.tokens_of[block] = key, chunk
            self.hash_to_block[key] = block

    def free_seq(self, seq) -> None:
        """Drop ``seq``'s references, tail first (tail blocks are evicted before heads)."""
        for block in reversed(seq.block_table):
            self._release(block)
        seq.block_table = []
        seq.block_hashes = []

    def reset_prefix_cache(self) -> None:
        """Forget every cached key of unused blocks (their blocks become plain free blocks)."""
        for block in list(self.evictable):
            self.hash_to_block.pop(self.hash_of[block], None)  # type: ignore[arg-type]
            self.hash_of[block], self.tokens_of[block] = None, None
            self.free.append(block)
        self.evictable.clear()


# ==================================================================== storage
class _Storage:
    """Per-layer cache tensors ``[num_blocks * block_size, width]`` (one allocation)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, widths: list[int],
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        slots = num_blocks * block_size
        self.tensors = [
            torch.zeros(num_layers, slots, w, dtype=dtype, device=device) for w in widths
        ]

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def bytes_per_token(self) -> int:
        """Cache bytes one token occupies over all layers."""
        return sum(t.shape[0] * t.shape[2] * t.element_size() for t in self.tensors)


class LatentCacheStorage(_Storage):
    """MLA: ``kv_lora_rank + qk_rope_head_dim`` values per token and layer (MTP layers too)."""

    def __init__(self, config, num_layers: int, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.rank = config.kv_lora_rank
        width = config.kv_lora_rank + config.qk_rope_head_dim
        super().__init__(num_layers, num_blocks, block_size, [width], dtype, device)

    def view(self, slot_mapping: torch.Tensor, gather_BS: torch.Tensor) -> PagedLatentView:
        return PagedLatentView(self, slot_mapping, gather_BS)


class KVCacheStorage(_Storage):
    """Dense GQA: K and V, ``num_key_value_heads * head_dim`` values each per token and layer."""

    def __init__(self, config, num_layers: int, num_blocks: int, block_size: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.kv_heads, self.head_dim = config.num_key_value_heads, config.dense_head_dim
        width = self.kv_heads * self.head_dim
        super().__init__(num_layers, num_blocks, block_size, [width, width], dtype, device)

    def view(self, slot_mapping: torch.Tensor, gather_BS: torch.Tensor) -> PagedKVView:
        return PagedKVView(self, slot_mapping, gather_BS)


class PagedLatentView:
    """The ``LatentCache`` protocol of ``MultiHeadLatentAttention`` over paged storage.

    ``slot_mapping [B*T]``: where each new token is written (row-major over ``[B, T]``);
    ``gather_BS``: the slots each batch row reads, padded with slots of the null block.
    """

    def __init__(self, storage: LatentCacheStorage, slot_mapping: torch.Tensor,
                 gather_BS: torch.Tensor) -> None:
        self.storage, self.slot_mapping, self.gather_BS = storage, slot_mapping, gather_BS

    def update(self, layer_idx: int, c_kv_BTC: torch.Tensor, k_pe_BTR: torch.Tensor):
        """Write ``[B, T, C]`` / ``[B, T, R]``; return the gathered ``[B, S, C]``, ``[B, S, R]``."""
        flat = self.storage.tensors[0][layer_idx]
        new = torch.cat([c_kv_BTC, k_pe_BTR], dim=-1)
        flat.index_copy_(0, self.slot_mapping, new.reshape(-1, flat.shape[1]).to(flat.dtype))
        got_BSW = flat[self.gather_BS]
        return got_BSW.split([self.storage.rank, flat.shape[1] - self.storage.rank], dim=-1)


class PagedKVView:
    """The ``KVCache`` protocol of the dense ``GQAttention`` over paged storage."""

    def __init__(self, storage: KVCacheStorage, slot_mapping: torch.Tensor,
                 gather_BS: torch.Tensor) -> None:
        self.storage, self.slot_mapping, self.gather_BS = storage, slot_mapping, gather_BS

    def update(self, layer_idx: int, k_BKTd: torch.Tensor, v_BKTd: torch.Tensor):
        """Write ``[B, K, T, d]`` keys/values; return the gathered ``[B, K, S, d]`` pair."""
        out = []
        b, kh, s = self.gather_BS.shape[0], self.storage.kv_heads, self.gather_BS.shape[1]
        for store, new in zip(self.storage.tensors, (k_BKTd, v_BKTd), strict=True):
            flat = store[layer_idx]
            rows = new.transpose(1, 2).reshape(-1, flat.shape[1]).to(flat.dtype)
            flat.index_copy_(0, self.slot_mapping, rows)
            out.append(flat[self.gather_BS].view(b, s, kh, -1).transpose(1, 2))
        return out[0], out[1]
