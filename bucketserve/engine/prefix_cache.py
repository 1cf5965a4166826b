"""Automatic prefix caching: which KV blocks hold which token prefix, who uses them, which to evict first.

A full block is keyed by a hash chained over its parent's hash and its own token ids, so equal hashes
mean equal prefixes (blake2b, 128 bits: collisions are not a practical concern). The cache owns three
things: the hash of every cached block (both ways), the reference count of every block a sequence holds,
and the LRU order of cached blocks no sequence holds any more (those are evicted, oldest first, when the
BlockManager's free list runs dry). Blocks without a hash go straight back to the free list when their
count drops to zero; the BlockManager owns that list.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

NO_PARENT = b""


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """The hash of a full block: its parent's hash (NO_PARENT for the first block) and its token ids."""
    return hashlib.blake2b(parent + array("q", token_ids).tobytes(), digest_size=16).digest()


def prefix_hashes(token_ids: list[int], block_size: int, num_blocks: int) -> list[bytes]:
    """The chained hashes of the first num_blocks full blocks of token_ids."""
    hashes, parent = [], NO_PARENT
    for i in range(num_blocks):
        parent = block_hash(parent, token_ids[i * block_size : (i + 1) * block_size])
        hashes.append(parent)
    return hashes


class PrefixCache:
    def __init__(self):
        self.block_by_hash: dict[bytes, int] = {}
        self.hash_by_block: dict[int, bytes] = {}
        self.ref_counts: dict[int, int] = {}  # blocks some sequence holds
        self.evictable: OrderedDict[int, None] = OrderedDict()  # cached, held by nobody; oldest first
        # Counted in tokens since the engine started, as vLLM's prefix-cache metrics are.
        self.num_query_tokens = 0
        self.num_hit_tokens = 0

    @property
    def num_evictable(self) -> int:
        return len(self.evictable)

    def lookup(self, hashes: list[bytes]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` (without taking them)."""
        blocks = []
        for h in hashes:
            block = self.block_by_hash.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def record_query(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        self.num_query_tokens += num_query_tokens
        self.num_hit_tokens += num_hit_tokens

    def take(self, block: int) -> None:
        """A sequence starts to hold block (a new one from the free list, or a cached one)."""
        self.evictable.pop(block, None)
        self.ref_counts[block] = self.ref_counts.get(block, 0) + 1

    def release(self, block: int) -> bool:
        """A sequence lets go of block; True when nobody holds it and it has no hash (back to the free list)."""
        count = self.ref_counts[block] - 1
        if count:
            self.ref_counts[block] = count
            return False
        del self.ref_counts[block]
        if block in self.hash_by_block:
            self.evictable[block] = None  # most recently used last
            return False
        return True

    def register(self, block: int, block_hash_: bytes) -> None:
        """block (held, full, computed) holds the prefix block_hash_ names. An equal prefix already cached
        in another block keeps that one: this block stays unhashed and is freed normally."""
        if block_hash_ in self.block_by_hash or block in self.hash_by_block:
            return
        self.block_by_hash[block_hash_] = block
        self.hash_by_block[block] = block_hash_

    def evict(self) -> int:
        """Forget the least recently used cached block nobody holds; returns it for reuse."""
        block, _ = self.evictable.popitem(last=False)
        del self.block_by_hash[self.hash_by_block.pop(block)]
        return block

    def is_evictable(self, block: int) -> bool:
        return block in self.evictable
