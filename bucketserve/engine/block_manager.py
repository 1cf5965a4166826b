"""The free list of KV cache blocks. Block 0 is the reserved padding block and is never handed out.

Blocks a sequence holds are reference-counted by the PrefixCache (engine/prefix_cache.py), which also
keeps the cached blocks nobody holds in LRU order; when the free list runs dry the oldest of those is
evicted and reused. With prefix caching off no block is ever hashed, so freed blocks all come back here.
"""
from __future__ import annotations

from collections import deque

from ..runtime.kv_cache import DUMMY_BLOCK
from .prefix_cache import PrefixCache, block_hash, prefix_hashes
from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.free_blocks: deque[int] = deque(b for b in range(num_blocks) if b != DUMMY_BLOCK)
        self.prefix_cache = PrefixCache()

    @property
    def num_free_blocks(self) -> int:
        """Blocks a sequence could take now: never used, or cached and held by nobody (evicted when taken)."""
        return len(self.free_blocks) + self.prefix_cache.num_evictable

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_held_blocks(self) -> int:
        """Blocks some sequence holds (0 once every request has finished: nothing leaked)."""
        return len(self.prefix_cache.ref_counts)

    @property
    def num_cached_blocks(self) -> int:
        return len(self.prefix_cache.hash_by_block)

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks seq must gain to hold num_tokens tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_hold(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= self.num_free_blocks

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        needed = self.blocks_needed(seq, num_tokens)
        if needed > self.num_free_blocks:
            raise RuntimeError(f"need {needed} KV blocks, {self.num_free_blocks} free")  # scheduler checks first
        for _ in range(needed):
            block = self.free_blocks.popleft() if self.free_blocks else self.prefix_cache.evict()
            self.prefix_cache.take(block)
            seq.block_table.append(block)

    # ---- admission with the prefix cache ----
    def cached_prefix(self, seq: Sequence, use_cache: bool = True) -> list[int]:
        """The cached blocks holding the longest prefix of seq's tokens to prefill, leaving at least the
        last of them to compute (its logits are the next token's; and a block being written is never shared)."""
        if not (self.enable_prefix_caching and use_cache):
            return []
        num_blocks = (seq.prefill_target - 1) // self.block_size
        return self.prefix_cache.lookup(prefix_hashes(seq.token_ids, self.block_size, num_blocks))

    def can_admit(self, seq: Sequence, cached_blocks: list[int]) -> bool:
        """Whether seq's cached blocks plus new ones for the rest of its prefill fit."""
        new = -(-seq.prefill_target // self.block_size) - len(cached_blocks)
        taken_from_lru = sum(1 for b in cached_blocks if self.prefix_cache.is_evictable(b))
        return new <= self.num_free_blocks - taken_from_lru

    def admit(self, seq: Sequence, cached_blocks: list[int], looked_up: bool = True) -> None:
        """Give seq its cached prefix (counted computed) and new blocks for everything it prefills;
        looked_up: whether cached_blocks came from a lookup (counted in the prefix-cache queries)."""
        if self.enable_prefix_caching and looked_up:
            self.prefix_cache.record_query(seq.prefill_target, len(cached_blocks) * self.block_size)
        for block in cached_blocks:
            self.prefix_cache.take(block)
        seq.block_table = list(cached_blocks)
        seq.block_hashes = [self.prefix_cache.hash_by_block[b] for b in cached_blocks]
        seq.num_computed_tokens = len(cached_blocks) * self.block_size
        self.grow(seq, seq.prefill_target)

    def register_computed(self, seq: Sequence) -> None:
        """Hash seq's blocks that have become full and computed, so later requests can reuse them."""
        if not self.enable_prefix_caching:
            return
        tokens, size = seq.token_ids, self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // size):
            parent = seq.block_hashes[-1] if seq.block_hashes else b""
            seq.block_hashes.append(block_hash(parent, tokens[i * size : (i + 1) * size]))
            self.prefix_cache.register(seq.block_table[i], seq.block_hashes[-1])

    def free(self, seq: Sequence) -> None:
        """Let go of seq's blocks, last first, so a shared prefix outlives its tails in the LRU order."""
        for block in reversed(seq.block_table):
            if self.prefix_cache.release(block):
                self.free_blocks.append(block)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0
