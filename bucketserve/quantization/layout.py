"""The packed layout of a quantized weight: what the kernels (kernels/quantized_linear.cpp) read, what
model.safetensors stores, and the plain-torch reference every kernel is tested against.

A weight [n, k] (n outputs, k inputs) is cut into groups of GROUP consecutive inputs of one output row, as
GGUF's Q8_0 / Q4_0 / Q4_1 blocks are, so those blocks are packed as they are, never requantized. Output rows
are packed in blocks of BLOCK_N (one AVX-512 vector of fp32), inputs padded to a whole number of groups:

    int8:  qweight int8  [ceil(n/16), k_pad, 16]     qweight[b, i, j] = q[16b + j, i]          value = q * scale
    int4:  qweight uint8 [ceil(n/16), k_pad/2, 16]   qweight[b, i, j] = q[16b + j, 2i]
                                                                      | q[16b + j, 2i + 1] << 4,  q in 0..15
                                                                                              value = q * scale + min
    scales (and mins, int4 only) float16 [ceil(n/16), k_pad/32, 16]: of row 16b + j, group g, at [b, g, j]

Rows past n and inputs past k hold q = 0, scale = 0, min = 0, so every padded value is exactly 0.
float16 scales are the file's own bits (GGUF stores them so); converted to fp32 they are exact, and so is
q * scale (+ min): the dequantized values equal gguf-py's bit for bit.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

GROUP = 32  # inputs per scale (and min)
BLOCK_N = 16  # output rows per packed block


class PackedWeight(NamedTuple):
    """One quantized weight in the packed layout; mins is None for int8 (symmetric)."""

    qweight: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None
    shape: tuple[int, int]  # (n, k) of the plain weight

    @property
    def bits(self) -> int:
        return 8 if self.qweight.dtype == torch.int8 else 4


def padded_k(k: int) -> int:
    return -(-k // GROUP) * GROUP


def _blocked(values: torch.Tensor, rows_per_block: int = BLOCK_N) -> torch.Tensor:
    """[n, m] -> [ceil(n/16), m, 16], rows past n zero."""
    n, m = values.shape
    blocks = -(-n // rows_per_block)
    padded = values.new_zeros(blocks * rows_per_block, m)
    padded[:n] = values
    return padded.view(blocks, rows_per_block, m).transpose(1, 2).contiguous()


def _unblocked(packed: torch.Tensor, n: int) -> torch.Tensor:
    """[ceil(n/16), m, 16] -> [n, m]."""
    blocks, m, width = packed.shape
    return packed.transpose(1, 2).reshape(blocks * width, m)[:n]


def _pad_groups(values: torch.Tensor, k: int, groups: int) -> torch.Tensor:
    """[n, k] values or [n, ceil(k/32)] per-group values, padded with zeros along the last dim."""
    padded = values.new_zeros(values.shape[0], groups)
    padded[:, : values.shape[1]] = values
    return padded


def pack_int8(q: torch.Tensor, scales: torch.Tensor) -> PackedWeight:
    """q int8 [n, k], scales float16 [n, ceil(k/32)] (value = q * scale) -> the packed layout."""
    n, k = q.shape
    _check(q, torch.int8, scales, None, n, k)
    k_pad = padded_k(k)
    return PackedWeight(_blocked(_pad_groups(q, k, k_pad)), _blocked(_pad_groups(scales, k, k_pad // GROUP)), None, (n, k))


def pack_int4(q: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> PackedWeight:
    """q uint8 [n, k] in 0..15, scales and mins float16 [n, ceil(k/32)] (value = q * scale + min) -> the packed
    layout. A symmetric source (GGUF's Q4_0: (q - 8) * scale) packs with mins = -8 * scale, exactly."""
    n, k = q.shape
    _check(q, torch.uint8, scales, mins, n, k)
    if q.numel() and int(q.max()) > 15:
        raise ValueError("int4 values must lie in 0..15")
    k_pad = padded_k(k)
    padded = _pad_groups(q, k, k_pad)
    pairs = padded[:, 0::2] | (padded[:, 1::2] << 4)
    groups = k_pad // GROUP
    return PackedWeight(_blocked(pairs), _blocked(_pad_groups(scales, k, groups)), _blocked(_pad_groups(mins, k, groups)), (n, k))


def _check(q, q_dtype, scales, mins, n, k) -> None:
    groups = -(-k // GROUP)
    if q.dtype != q_dtype:
        raise TypeError(f"quantized values must be {q_dtype}, got {q.dtype}")
    for name, t in (("scales", scales), ("mins", mins)):
        if t is not None and (t.dtype != torch.float16 or tuple(t.shape) != (n, groups)):
            raise ValueError(f"{name} must be float16 [{n}, {groups}], got {t.dtype} {list(t.shape)}")


def unpack_values(packed: PackedWeight) -> torch.Tensor:
    """The stored integers, [n, k]: int8 as they are, int4 as 0..15 (uint8)."""
    n, k = packed.shape
    q = _unblocked(packed.qweight, n)
    if packed.bits == 4:
        q = torch.stack((q & 0xF, q >> 4), dim=-1).flatten(1)
    return q[:, :k]


def group_params(packed: PackedWeight) -> tuple[torch.Tensor, torch.Tensor | None]:
    """scales and mins as float32 [n, k_pad/32]."""
    n, _ = packed.shape
    scales = _unblocked(packed.scales, n).float()
    mins = None if packed.mins is None else _unblocked(packed.mins, n).float()
    return scales, mins


def dequantize(packed: PackedWeight) -> torch.Tensor:
    """float32 [n, k]: every value exactly as the scheme defines it (the reference for the kernels)."""
    n, k = packed.shape
    q = unpack_values(packed).float()
    scales, mins = group_params(packed)
    scale = scales.repeat_interleave(GROUP, dim=1)[:, :k]
    values = q * scale
    if mins is not None:
        values = values + mins.repeat_interleave(GROUP, dim=1)[:, :k]
    return values


def reference_linear(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """x @ dequantize(packed).T in plain torch: what every kernel must compute (up to summation order)."""
    return x.float() @ dequantize(packed).T
