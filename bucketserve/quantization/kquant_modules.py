"""The projections and the embedding over weights kept from K-quant (and Q5_0 / Q5_1) blocks (kquant_layout.py),
as frozen parameters named so that model.safetensors stores them as they are (`...q_proj.qweight`, `.qhigh`,
`.scales`, `.mins`; float32 scales tell them apart from the int4 layout's float16 ones).

Subclasses of the int8 / int4 modules, so everything that asks whether a model is quantized sees them; their
GEMM is torch.ops.bucketserve.kquant_linear (kernels/kquant_linear.cpp) where this process has it and x is
fp32 on the CPU, else the plain-torch reference. Tensor parallelism does not split them (yet).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..kernels import library
from ..models.projections import EAGER, GraphForm
from .kquant_layout import KPackedWeight, reference_linear
from .layout import BLOCK_N
from .modules import QuantizedEmbedding, QuantizedLinear, _frozen


class KForm(NamedTuple):
    """A plan's entry for a kept K weight: bits of q (4, 5, 6) and inputs per scale (32, 16)."""

    bits: int
    group: int


def kquant_linear(x: torch.Tensor, packed: KPackedWeight) -> torch.Tensor:
    """x @ dequantize(packed).T: our kernel on fp32 CPU input, else dequantize-then-matmul (a temporary)."""
    n, k = packed.shape
    if x.device.type == "cpu" and x.dtype == torch.float32 and "kquant_linear" in library.registered_ops():
        out = torch.ops.bucketserve.kquant_linear(x.reshape(-1, k), packed.qweight, packed.qhigh, packed.scales,
                                                  packed.mins, n, k)
        return out.view(*x.shape[:-1], n)
    return reference_linear(x, packed).to(x.dtype)


class _KPacked:
    """The parameters of one kept K weight (mixed into the int8 / int4 modules in place of theirs)."""

    def _set(self, packed: KPackedWeight) -> None:
        self.qweight = _frozen(packed.qweight)
        self.qhigh = _frozen(packed.qhigh)
        self.scales = _frozen(packed.scales)
        self.mins = _frozen(packed.mins)
        self.shape = packed.shape

    @property
    def packed(self) -> KPackedWeight:
        return KPackedWeight(self.qweight, self.qhigh, self.scales, self.mins, self.shape)

    @property
    def bits(self) -> int:
        return self.packed.bits

    def extra_repr(self) -> str:
        return f"out_features={self.shape[0]}, in_features={self.shape[1]}, bits={self.bits}, group={self.packed.group}"


class KQuantLinear(_KPacked, QuantizedLinear):
    def multiply(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        """x @ weight.T without the bias, through the K layout's own GEMM (weights only: exact)."""
        return kquant_linear(x, self.packed)

    def tie_to(self, embedding: KQuantEmbedding) -> None:
        self.qweight, self.qhigh, self.scales, self.mins = embedding.qweight, embedding.qhigh, embedding.scales, embedding.mins
        self.shape = embedding.shape

    def take_rows(self, start: int, stop: int) -> None:
        raise ValueError("tensor parallelism does not split weights kept from K-quant / Q5_0 / Q5_1 blocks; compile "
                         "this file with tensor_parallel_size=1")

    take_inputs = take_rows


class KQuantEmbedding(_KPacked, QuantizedEmbedding):
    """Gathers the selected rows' values, scales and mins and dequantizes those rows only, in torch ops."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        block, lane = input_ids // BLOCK_N, input_ids % BLOCK_N
        pairs = self.qweight[block, :, lane]  # [*ids, k / 2]
        q = torch.stack((pairs & 0xF, pairs >> 4), dim=-1).flatten(-2)
        if self.qhigh is not None:  # each input's 16-bit mask(s) of the block: bit `lane` is this row's
            bits, k = self.bits, self.shape[1]
            raw = self.qhigh[block].reshape(*input_ids.shape, k, bits - 4, 2).to(torch.int32)
            masks = raw[..., 0] | (raw[..., 1] << 8)  # [*ids, k, planes]
            set_bits = (masks >> lane[..., None, None].to(torch.int32)) & 1
            shifts = torch.arange(4, bits, dtype=torch.int32, device=input_ids.device)
            q = q | (set_bits << shifts).sum(-1).to(torch.uint8)
        group = self.packed.group
        scales = self.scales[block, :, lane].repeat_interleave(group, dim=-1)
        mins = self.mins[block, :, lane].repeat_interleave(group, dim=-1)
        return (q.float() * scales + mins).to(self.dtype)
