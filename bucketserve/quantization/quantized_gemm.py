"""The Python side of the quantized GEMM op: x @ dequantize(packed).T for a weight in the packed layout
(layout.py), through torch.ops.bucketserve.quantized_linear (kernels/quantized_linear.cpp) where this process
has it, else the plain-torch reference. The same in every graph form: the op reads the packed layout itself.
With activations="int8" the input is quantized per group at run time: torch.ops.bucketserve.int8_activation_linear
(kernels/int8_activation_linear.cpp), or its reference (activations.py)."""
from __future__ import annotations

import torch

from ..kernels import library
from .activations import reference_int8_activation_linear
from .layout import PackedWeight, reference_linear


def quantized_linear(x: torch.Tensor, packed: PackedWeight, activations: str | None = None) -> torch.Tensor:
    """x @ dequantize(packed).T: torch.ops.bucketserve.quantized_linear (kernels/quantized_linear.cpp), which
    dequantizes in registers, where this process has it and x is fp32 on the CPU; else the plain-torch reference
    (dequantize, then matmul: CUDA, bf16, machines where the library does not build), whose float weight is a
    temporary of the call, never kept. activations="int8": x quantized per group at run time, through
    int8_activation_linear or its reference alike."""
    n, k = packed.shape
    if activations == "int8":
        if x.device.type == "cpu" and x.dtype == torch.float32 and "int8_activation_linear" in library.registered_ops():
            out = torch.ops.bucketserve.int8_activation_linear(x.reshape(-1, k), packed.qweight, packed.scales,
                                                               packed.mins, n, k)
            return out.view(*x.shape[:-1], n)
        return reference_int8_activation_linear(x, packed).to(x.dtype)
    if x.device.type == "cpu" and x.dtype == torch.float32 and "quantized_linear" in library.registered_ops():
        out = torch.ops.bucketserve.quantized_linear(x.reshape(-1, k), packed.qweight, packed.scales, packed.mins, n, k)
        return out.view(*x.shape[:-1], n)
    return reference_linear(x, packed).to(x.dtype)
