"""activations="int8": the activations quantized at run time, per row in groups of GROUP inputs (the weights'
groups, as llama.cpp's Q8_0 activations), and the plain-torch reference of the kernel that multiplies them
(kernels/int8_activation_linear.cpp) in integers.

    d = absmax(group) / 127,  xq = round(x * (1 / d)) in -127..127 (ties to even),  x ~ d * xq

The kernel computes exactly these xq and d (the same fp32 operations), so its result differs from
reference_linear only by fp32 rounding: dequantize(xq) @ dequantize(W).T, each group's dot product exact.
"""
from __future__ import annotations

import torch

from .layout import GROUP, PackedWeight, dequantize, padded_k


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float [rows, k] -> (xq int8 [rows, k_pad], d float32 [rows, k_pad / GROUP]); inputs past k are 0."""
    rows, k = x.shape
    padded = x.new_zeros(rows, padded_k(k), dtype=torch.float32)
    padded[:, :k] = x
    groups = padded.view(rows, -1, GROUP)
    d = groups.abs().amax(-1) / 127
    inverse = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    xq = torch.round(groups * inverse.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
    return xq.flatten(1), d


def dequantize_activations(xq: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """float64 [rows, k]: d * xq, exactly."""
    rows = xq.shape[0]
    return (xq.double().view(rows, -1, GROUP) * d.double().unsqueeze(-1)).flatten(1)[:, :k]


def reference_int8_activation_linear(x: torch.Tensor, packed: PackedWeight) -> torch.Tensor:
    """What int8_activation_linear computes, in float64 (then fp32): the quantized activations times the
    dequantized weight."""
    k = packed.shape[1]
    xq, d = quantize_activations(x.reshape(-1, k).float())
    out = dequantize_activations(xq, d, k) @ dequantize(packed).double().T
    return out.float().view(*x.shape[:-1], packed.shape[0])
