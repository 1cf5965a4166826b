"""The quantized forms of the projections and the embedding: frozen parameters in the packed layout, named so
that model.safetensors stores them as they are (`...q_proj.qweight`, `...q_proj.scales`, `...q_proj.mins`).

No float copy of a weight is ever made: QuantizedLinear multiplies through the graph form's quantized GEMM
(our kernel, or dequantize-then-matmul where it is missing), QuantizedEmbedding dequantizes only the rows
it gathers.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.projections import EAGER, GraphForm
from .layout import BLOCK_N, GROUP, PackedWeight, padded_k
from .quantized_gemm import quantized_linear
from .slicing import columns, rows


def empty_packed(n: int, k: int, bits: int, device: torch.device | str) -> PackedWeight:
    """A packed weight of shape (n, k) with uninitialised tensors (on `meta`: shapes only, for loading into)."""
    blocks, k_pad = -(-n // BLOCK_N), padded_k(k)
    if bits == 8:
        qweight = torch.empty(blocks, k_pad, BLOCK_N, dtype=torch.int8, device=device)
    elif bits == 4:
        qweight = torch.empty(blocks, k_pad // 2, BLOCK_N, dtype=torch.uint8, device=device)
    else:
        raise ValueError(f"no packed layout of {bits} bits; there are 8 and 4")
    scales = torch.empty(blocks, k_pad // GROUP, BLOCK_N, dtype=torch.float16, device=device)
    mins = torch.empty_like(scales) if bits == 4 else None
    return PackedWeight(qweight, scales, mins, (n, k))


def _frozen(tensor: torch.Tensor | None) -> nn.Parameter | None:
    return None if tensor is None else nn.Parameter(tensor, requires_grad=False)


class _Packed(nn.Module):
    """Holds one packed weight as frozen parameters qweight, scales and mins (None for int8)."""

    def __init__(self, packed: PackedWeight):
        super().__init__()
        self._set(packed)

    def _set(self, packed: PackedWeight) -> None:
        self.qweight = _frozen(packed.qweight)
        self.scales = _frozen(packed.scales)
        self.mins = _frozen(packed.mins)
        self.shape = packed.shape

    @property
    def packed(self) -> PackedWeight:
        return PackedWeight(self.qweight, self.scales, self.mins, self.shape)

    @property
    def bits(self) -> int:
        return self.packed.bits

    def extra_repr(self) -> str:
        activations = getattr(self, "activations", None)
        return (f"out_features={self.shape[0]}, in_features={self.shape[1]}, bits={self.bits}"
                + (f", activations={activations}" if activations else ""))


class QuantizedLinear(_Packed):
    """A Linear whose weight is packed (quantization/layout.py); the bias, if any, stays float. It has the float
    Linear's methods (models/tensor_parallel.ShardableLinear), so tensor parallelism shards either alike.
    activations="int8" quantizes its input at run time and multiplies in integers (quantization/activations.py)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, activations: str | None = None):
        super().__init__(packed)
        self.bias = _frozen(bias)
        self.activations = activations

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    def forward(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        out = self.multiply(x, form)
        return out if self.bias is None else out + self.bias

    def multiply(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        """x @ weight.T without the bias: the same quantized GEMM in every form."""
        return quantized_linear(x, self.packed, self.activations)

    def tie_to(self, embedding: QuantizedEmbedding) -> None:
        """Share the embedding's packed tensors (tie_word_embeddings): one copy for both."""
        self.qweight, self.scales, self.mins, self.shape = embedding.qweight, embedding.scales, embedding.mins, embedding.shape

    def take_rows(self, start: int, stop: int) -> None:
        """Keep output rows [start, stop) (tensor parallelism), re-packed: the full tensors can be freed."""
        self._set(rows(self.packed, start, stop))
        if self.bias is not None:
            self.bias = _frozen(self.bias[start:stop].clone())

    def take_inputs(self, start: int, stop: int) -> None:
        """Keep inputs [start, stop) of every row, re-packed (tensor parallelism: whole groups only); the bias
        stays whole."""
        self._set(columns(self.packed, start, stop))


class QuantizedEmbedding(_Packed):
    """An embedding table [vocab, hidden] packed as a weight of vocab outputs: a lookup gathers the selected
    rows' values and scales and dequantizes those rows only, in torch ops (so it compiles)."""

    def __init__(self, packed: PackedWeight, dtype: torch.dtype):
        super().__init__(packed)
        self.dtype = dtype  # of the hidden states it starts

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        block, lane = input_ids // BLOCK_N, input_ids % BLOCK_N
        # Indexing dims 0 and 2 puts the ids' dims first: [*ids, k_pad (or k_pad / 2), ] and [*ids, groups].
        q = self.qweight[block, :, lane]
        if self.mins is not None:  # int4: two values a byte, low nibble first
            q = torch.stack((q & 0xF, q >> 4), dim=-1).flatten(-2)
        values = q.float() * self.scales[block, :, lane].float().repeat_interleave(GROUP, dim=-1)
        if self.mins is not None:
            values = values + self.mins[block, :, lane].float().repeat_interleave(GROUP, dim=-1)
        return values[..., : self.shape[1]].to(self.dtype)
