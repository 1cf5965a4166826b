"""GGUF's Q8_0, Q4_0 and Q4_1 blocks in the packed layout, as they are stored: never requantized.

Each block covers 32 consecutive inputs of one row (our GROUP), so a block's float16 scale (and min) is the
group's, bit for bit. Byte layouts (ggml-common.h; gguf-py's quants.py decodes the same):

    Q8_0  34 bytes: d (f16), 32 x int8 q              value = d * q
    Q4_0  18 bytes: d (f16), 16 bytes of nibbles       value = d * (q - 8)  -> scale d, min -8 * d
    Q4_1  20 bytes: d (f16), m (f16), 16 bytes         value = d * q + m

In Q4_0 / Q4_1, element i of a block (i < 16) is the low nibble of byte i and element i + 16 its high nibble.
For Q4_0, -8 * d is exact in float16 (a power-of-two multiple; it would overflow only for |d| > 8188, which no
real weight has: such a file is refused), and q * d + (-8 * d) == (q - 8) * d exactly in float32, since both
products fit float32's mantissa.
"""
from __future__ import annotations

import torch

from ..checkpoints.base import QuantizedBlocks
from .layout import GROUP, PackedWeight, pack_int4, pack_int8

# GGML type -> bits of the layout it packs into as it is.
KEPT_TYPES = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4}
BLOCK_BYTES = {"Q8_0": 2 + GROUP, "Q4_0": 2 + GROUP // 2, "Q4_1": 4 + GROUP // 2}


def _blocks(stored: QuantizedBlocks) -> torch.Tensor:
    """uint8 [n, groups, block bytes]."""
    n, k = stored.shape
    block_bytes = BLOCK_BYTES[stored.type_name]
    if k % GROUP or stored.data.shape != (n, k // GROUP * block_bytes):
        raise ValueError(f"{stored.type_name} blocks of shape {list(stored.shape)} must be whole blocks of {GROUP} "
                         f"inputs, {block_bytes} bytes each; got data of shape {list(stored.data.shape)}")
    return stored.data.reshape(n, k // GROUP, block_bytes)


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of every block: [n, groups]."""
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16)[..., 0]


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """[n, groups, 16] bytes -> [n, groups * 32] values 0..15 in input order (low nibbles first, then high)."""
    return torch.cat((packed & 0xF, packed >> 4), dim=-1).flatten(1)


def pack_gguf_blocks(stored: QuantizedBlocks) -> PackedWeight:
    """A Q8_0, Q4_0 or Q4_1 weight in the packed layout, its scales, mins and values exactly as stored."""
    if stored.type_name not in KEPT_TYPES:
        raise ValueError(f"{stored.type_name} blocks are not packed as they are; packed are {', '.join(KEPT_TYPES)}")
    blocks = _blocks(stored)
    scales = _f16(blocks, 0).contiguous()
    if stored.type_name == "Q8_0":
        return pack_int8(blocks[..., 2:].contiguous().view(torch.int8).flatten(1), scales)
    if stored.type_name == "Q4_0":
        if bool((scales.float().abs() > 8188).any()):
            raise ValueError("a Q4_0 block has a scale above 8188, whose min (-8 * scale) overflows float16")
        return pack_int4(_nibbles(blocks[..., 2:]), scales, (scales * -8).contiguous())
    return pack_int4(_nibbles(blocks[..., 4:]), scales, _f16(blocks, 2).contiguous())
