"""The packed layout of a weight kept from GGUF's Q4_K, Q5_K, Q6_K, Q5_0 or Q5_1 blocks (kquant_blocks.py), what
kernels/kquant_linear.cpp reads, and its plain-torch reference.

Every one of those types is, per sub-block of `group` inputs of one row, value = q * scale + min with q an
unsigned integer of 4, 5 or 6 bits and scale, min float32 (kquant_blocks.py shows each type's scale and min
are exact in float32, and that q * scale is too, so q * scale + min rounds once, as gguf-py's dequantize does).
The low 4 bits of q are stored as the int4 layout stores its values (layout.py), the bits above in a plane of
their own, so a 5-bit weight reads 5 bits a value and a 4-bit one no more than the int4 layout. The plane holds,
per input of a block of 16 outputs, a 16-bit mask (bit j: output j), which AVX-512 uses as it is, as the mask
of one add of 16 (kernels/kquant_linear.cpp):

    qweight uint8 [ceil(n/16), k/2, 16]       qweight[b, i, j] = low(q[16b + j, 2i]) | low(q[16b + j, 2i + 1]) << 4
    qhigh   uint8 [ceil(n/16), k/8, 16]       5 bits: as [ceil(n/16), k] little-endian uint16 masks, bit j of
                                              mask [b, i] = bit 4 of q[16b + j, i]
            uint8 [ceil(n/16), k/4, 16]       6 bits: [ceil(n/16), k, 2] masks, of bit 4 then of bit 5
            absent (None)                     4 bits
    scales, mins float32 [ceil(n/16), k/group, 16]: of row 16b + j, sub-block g, at [b, g, j]; group 32 or 16

k is a whole number of groups (GGUF's blocks are whole). Rows past n hold q = 0, scale = 0, min = 0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .layout import BLOCK_N, _blocked, _unblocked

GROUPS = (16, 32)  # inputs per scale and min: Q6_K's sub-blocks are 16, the others' 32
HIGH_BITS_PER_BYTE = {5: 8, 6: 4}  # values whose high bits one byte of qhigh holds


class KPackedWeight(NamedTuple):
    """One weight kept from K-quant (or Q5_0 / Q5_1) blocks; qhigh is None for 4 bits."""

    qweight: torch.Tensor
    qhigh: torch.Tensor | None
    scales: torch.Tensor
    mins: torch.Tensor
    shape: tuple[int, int]  # (n, k) of the plain weight

    @property
    def bits(self) -> int:
        if self.qhigh is None:
            return 4
        return 5 if self.qhigh.shape[1] * 8 == self.shape[1] else 6

    @property
    def group(self) -> int:
        return self.shape[1] // self.scales.shape[1]


def pack_kquant(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, bits: int) -> KPackedWeight:
    """q uint8 [n, k] of `bits` bits, scales and mins float32 [n, k / group] (value = q * scale + min) -> the layout."""
    n, k = q.shape
    if q.dtype != torch.uint8 or bits not in (4, 5, 6):
        raise ValueError(f"kept values are uint8 of 4, 5 or 6 bits, got {q.dtype} of {bits} bits")
    if q.numel() and int(q.max()) >= 1 << bits:
        raise ValueError(f"{bits}-bit values must lie in 0..{(1 << bits) - 1}")
    groups = scales.shape[1] if scales.dim() == 2 else 0
    if groups == 0 or k % groups or k // groups not in GROUPS:
        raise ValueError(f"scales of shape {list(scales.shape)} do not split {k} inputs into groups of {GROUPS}")
    for name, t in (("scales", scales), ("mins", mins)):
        if t.dtype != torch.float32 or tuple(t.shape) != (n, groups):
            raise ValueError(f"{name} must be float32 [{n}, {groups}], got {t.dtype} {list(t.shape)}")
    low = q & 0xF
    qweight = _blocked(low[:, 0::2] | (low[:, 1::2] << 4))
    qhigh = None if bits == 4 else _masks(q, bits)
    return KPackedWeight(qweight, qhigh, _blocked(scales), _blocked(mins), (n, k))


def _masks(q: torch.Tensor, bits: int) -> torch.Tensor:
    """The high plane: per block of 16 rows and input, a uint16 mask per bit above the low nibble, as bytes."""
    n, k = q.shape
    blocks = -(-n // BLOCK_N)
    padded = q.new_zeros(blocks * BLOCK_N, k)
    padded[:n] = q
    by_lane = padded.view(blocks, BLOCK_N, k).to(torch.int32)  # [block, output j, input]
    weights = (1 << torch.arange(BLOCK_N, dtype=torch.int32)).view(1, BLOCK_N, 1)
    planes = [(((by_lane >> bit) & 1) * weights).sum(1) for bit in range(4, bits)]  # each [block, input]
    masks = torch.stack(planes, dim=-1).reshape(blocks, -1)  # [block, input * planes]
    as_bytes = torch.stack((masks & 0xFF, masks >> 8), dim=-1).to(torch.uint8)  # little-endian
    return as_bytes.reshape(blocks, k // HIGH_BITS_PER_BYTE[bits], BLOCK_N)


def empty_kpacked(n: int, k: int, bits: int, group: int, device: torch.device | str) -> KPackedWeight:
    """A kept weight of shape (n, k) with uninitialised tensors (on `meta`: shapes only, for loading into)."""
    blocks = -(-n // BLOCK_N)
    qweight = torch.empty(blocks, k // 2, BLOCK_N, dtype=torch.uint8, device=device)
    qhigh = None if bits == 4 else torch.empty(blocks, k // HIGH_BITS_PER_BYTE[bits], BLOCK_N, dtype=torch.uint8,
                                                device=device)
    scales = torch.empty(blocks, k // group, BLOCK_N, dtype=torch.float32, device=device)
    return KPackedWeight(qweight, qhigh, scales, torch.empty_like(scales), (n, k))


def unpack_values(packed: KPackedWeight) -> torch.Tensor:
    """The stored integers q, uint8 [n, k]."""
    n, k = packed.shape
    pairs = _unblocked(packed.qweight, n)
    q = torch.stack((pairs & 0xF, pairs >> 4), dim=-1).flatten(1)
    if packed.qhigh is not None:
        q = q | _high_bits(packed.qhigh, packed.bits, k)[:n]
    return q[:, :k]


def _high_bits(qhigh: torch.Tensor, bits: int, k: int) -> torch.Tensor:
    """The plane's bits above the low nibble, in place (bit 4, 5) of every padded row: uint8 [blocks * 16, k]."""
    blocks = qhigh.shape[0]
    pairs = qhigh.reshape(blocks, k, bits - 4, 2).to(torch.int32)
    masks = pairs[..., 0] | (pairs[..., 1] << 8)  # [block, input, plane]
    lanes = torch.arange(BLOCK_N, dtype=torch.int32).view(1, BLOCK_N, 1, 1)
    set_bits = (masks.unsqueeze(1) >> lanes) & 1  # [block, output j, input, plane]
    shifts = torch.arange(4, bits, dtype=torch.int32)
    return (set_bits << shifts).sum(-1).to(torch.uint8).reshape(blocks * BLOCK_N, k)


def dequantize(packed: KPackedWeight) -> torch.Tensor:
    """float32 [n, k]: q * scale + min, the product exact and the sum rounded once (the kernels' reference)."""
    n, _ = packed.shape
    group = packed.group
    scales = _unblocked(packed.scales, n).repeat_interleave(group, dim=1)
    mins = _unblocked(packed.mins, n).repeat_interleave(group, dim=1)
    return unpack_values(packed).float() * scales + mins


def reference_linear(x: torch.Tensor, packed: KPackedWeight) -> torch.Tensor:
    """x @ dequantize(packed).T in plain torch: what every kernel path must compute (up to summation order)."""
    return x.float() @ dequantize(packed).T
