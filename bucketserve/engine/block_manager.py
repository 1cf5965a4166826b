"""The free list of KV cache blocks. Block 0 is the reserved padding block and is never handed out."""
from __future__ import annotations

from collections import deque

from ..runtime.kv_cache import DUMMY_BLOCK
from .sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_blocks: deque[int] = deque(b for b in range(num_blocks) if b != DUMMY_BLOCK)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_blocks)

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    def blocks_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Blocks seq must gain to hold num_tokens tokens."""
        return max(0, -(-num_tokens // self.block_size) - len(seq.block_table))

    def can_hold(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_needed(seq, num_tokens) <= len(self.free_blocks)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        needed = self.blocks_needed(seq, num_tokens)
        if needed > len(self.free_blocks):
            raise RuntimeError(f"need {needed} KV blocks, {len(self.free_blocks)} free")  # scheduler checks first
        seq.block_table.extend(self.free_blocks.popleft() for _ in range(needed))

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
