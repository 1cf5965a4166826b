"""GGUF's K-quant blocks (Q4_K, Q5_K, Q6_K) and Q5_0 / Q5_1 in the kept layout (kquant_layout.py): never requantized.

Each type, per sub-block of one row, is value = q * scale + min with unsigned q (ggml-common.h's block_q4_K
etc.; gguf-py's quants.py dequantizes the same bytes, and is the reference the tests hold us to):

    Q4_K  144 bytes / 256: d, dmin (f16), 8 x (6-bit sc, 6-bit m), 4-bit q    scale = d*sc,  min = -(dmin*m)   group 32
    Q5_K  176 bytes / 256: as Q4_K, plus a 5th bit per value                   scale = d*sc,  min = -(dmin*m)   group 32
    Q6_K  210 bytes / 256: 6-bit q, 16 x int8 sc, d (f16)                      scale = d*sc,  min = -32*scale   group 16
    Q5_0   22 bytes / 32:  d (f16), 5-bit q                                    scale = d,     min = -16*d       group 32
    Q5_1   24 bytes / 32:  d, m (f16), 5-bit q                                 scale = d,     min = m           group 32

Why float32 is exact here: d and dmin have 11 significant bits, sc and m at most 7 (|sc| <= 128), q at most 6,
so d*sc (18 bits) and q*scale (24 bits) are exact products in float32's 24; so is -32*scale and -16*d
(powers of two). gguf-py computes (d*sc)*q - dmin*m, one rounding after exact products; q*scale + min is the
same rounding. For Q6_K and Q5_0 it computes (d*sc)*(q - 32), exact, which equals q*scale - 32*scale exactly
(the exact sum is representable); only a zero's sign may differ (+0 here where gguf-py's is -0 for a
negative scale), which no product or sum can tell apart.
"""
from __future__ import annotations

import torch

from ..checkpoints.base import QuantizedBlocks
from .kquant_layout import KPackedWeight, pack_kquant

QK_K = 256  # weights per K-quant super-block
# GGML type -> (weights per block, bytes per block, bits of q, inputs per sub-block)
KQUANT_TYPES = {
    "Q4_K": (QK_K, 144, 4, 32),
    "Q5_K": (QK_K, 176, 5, 32),
    "Q6_K": (QK_K, 210, 6, 16),
    "Q5_0": (32, 22, 5, 32),
    "Q5_1": (32, 24, 5, 32),
}


def _blocks(stored: QuantizedBlocks) -> torch.Tensor:
    """uint8 [n * blocks per row, block bytes]."""
    n, k = stored.shape
    per_block, block_bytes, _, _ = KQUANT_TYPES[stored.type_name]
    if k % per_block or stored.data.shape != (n, k // per_block * block_bytes):
        raise ValueError(f"{stored.type_name} blocks of shape {list(stored.shape)} must be whole blocks of {per_block} "
                         f"inputs, {block_bytes} bytes each; got data of shape {list(stored.data.shape)}")
    return stored.data.reshape(-1, block_bytes)


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 at byte `offset` of every block, as float32 (exact): [blocks, 1]."""
    return blocks[:, offset:offset + 2].contiguous().view(torch.float16).float()


def _k_scale_min(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K's 12 bytes of 6-bit scales and mins -> two [blocks, 8] (gguf-py's Q4_K.get_scale_min)."""
    d, m, m_d = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    sc = torch.cat((d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mn = torch.cat((m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)), dim=1)
    return sc, mn


def _nibble_runs(qs: torch.Tensor, run: int) -> torch.Tensor:
    """Bytes [blocks, m] holding runs of `run` low nibbles then `run` high nibbles -> [blocks, 2m] values."""
    blocks = qs.shape[0]
    runs = qs.reshape(blocks, -1, 1, run)
    return torch.cat((runs & 0xF, runs >> 4), dim=2).reshape(blocks, -1)


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """Q5_0 / Q5_1's 4 bytes (a little-endian uint32) -> [blocks, 32] bits, bit i for value i."""
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((qh.unsqueeze(-1) >> shifts) & 1).reshape(qh.shape[0], 32)


def decode_blocks(stored: QuantizedBlocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(q uint8 [n, k], scales float32 [n, k / group], mins float32 [n, k / group], bits) of one weight."""
    n, k = stored.shape
    type_name = stored.type_name
    blocks = _blocks(stored)
    _, _, bits, group = KQUANT_TYPES[type_name]
    if type_name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks, 0), _f16(blocks, 2)
        sc, mn = _k_scale_min(blocks[:, 4:16])
        scales, mins = d * sc.float(), -(dmin * mn.float())
        if type_name == "Q4_K":
            q = _nibble_runs(blocks[:, 16:144], 32)
        else:  # bit s of qh[p] is the 5th bit of value 32 s + p
            qh = blocks[:, 16:48]
            shifts = torch.arange(8, dtype=torch.uint8).view(1, 8, 1)
            q = _nibble_runs(blocks[:, 48:176], 32) | (((qh.unsqueeze(1) >> shifts) & 1) << 4).reshape(-1, QK_K)
    elif type_name == "Q6_K":
        # Two halves of 128 values: half h's value 64 s + p (s < 2) is nibble s of ql[64 h + p]; its value
        # 32 s + p (s < 4) has bits 4-5 in bits 2s, 2s+1 of qh[32 h + p].
        ql, qh = blocks[:, 0:128], blocks[:, 128:192]
        low = _nibble_runs(ql, 64)
        shifts = torch.arange(0, 8, 2, dtype=torch.uint8).view(1, 1, 4, 1)
        high = ((qh.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)
        q = low | (high << 4)
        scales = _f16(blocks, 208) * blocks[:, 192:208].contiguous().view(torch.int8).float()
        mins = scales * -32
    else:  # Q5_0, Q5_1: value i < 16 is the low nibble of qs[i], value i + 16 its high nibble
        offset = 2 if type_name == "Q5_0" else 4
        d = _f16(blocks, 0)
        q = _nibble_runs(blocks[:, offset + 4:offset + 20], 16) | (_q5_high(blocks[:, offset:offset + 4]) << 4)
        scales = d
        mins = d * -16 if type_name == "Q5_0" else _f16(blocks, 2)
    return q.reshape(n, k), scales.reshape(n, k // group), mins.reshape(n, k // group), bits


def pack_kquant_blocks(stored: QuantizedBlocks) -> KPackedWeight:
    """A Q4_K, Q5_K, Q6_K, Q5_0 or Q5_1 weight in the kept layout, its values exactly as stored."""
    if stored.type_name not in KQUANT_TYPES:
        raise ValueError(f"{stored.type_name} blocks are not kept by the K layout; it keeps {', '.join(KQUANT_TYPES)}")
    q, scales, mins, bits = decode_blocks(stored)
    return pack_kquant(q.contiguous(), scales.contiguous(), mins.contiguous(), bits)
