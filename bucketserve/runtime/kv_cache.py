"""The one paged KV cache shared by every graph, and the arithmetic of its slots."""
from __future__ import annotations

import torch

from ..compiler.graph_specs import cache_shape
from ..config import CompileConfig
from ..models.llama import PagedCausalLM

# Block 0 is never handed to a sequence: padding rows and padding tokens write and read only here.
DUMMY_BLOCK = 0


class KVCache:
    def __init__(self, model: PagedCausalLM, compile_config: CompileConfig, device: torch.device):
        self.block_size = compile_config.kvcache_block_size
        self.num_blocks = compile_config.kvcache_num_blocks
        self.blocks_per_sequence = compile_config.blocks_per_sequence
        self.tensor = torch.zeros(
            cache_shape(model, compile_config), dtype=compile_config.kv_cache_torch_dtype, device=device
        )

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()

    def padded_block_table(self, block_table: list[int]) -> list[int]:
        """A sequence's blocks, then the dummy block up to blocks_per_sequence (those are masked anyway)."""
        if len(block_table) > self.blocks_per_sequence:
            raise ValueError(f"block table has {len(block_table)} blocks; a sequence holds at most {self.blocks_per_sequence}")
        # A compiled graph does not bounds-check its indices, and block 0 is shared by every padding row.
        for block in block_table:
            if not DUMMY_BLOCK < block < self.num_blocks:
                raise ValueError(
                    f"block id {block} cannot hold a sequence: use 1 to {self.num_blocks - 1} "
                    f"(block {DUMMY_BLOCK} is reserved for padding rows)"
                )
        return list(block_table) + [DUMMY_BLOCK] * (self.blocks_per_sequence - len(block_table))

    def slot(self, block_table: list[int], position: int) -> int:
        """The slot of `position` in a sequence's own (unpadded) blocks."""
        if not 0 <= position < len(block_table) * self.block_size:
            raise ValueError(
                f"position {position} is outside the sequence's {len(block_table)} blocks of {self.block_size} "
                f"tokens; give the sequence a block for every position it writes"
            )
        return block_table[position // self.block_size] * self.block_size + position % self.block_size

    def dummy_slot(self, offset: int = 0) -> int:
        return DUMMY_BLOCK * self.block_size + offset % self.block_size

