"""x @ weight.T in the forms a forward can be written in, and which form each graph uses (GraphForm).

- dense_linear: the eager engine's GEMM.
- F.linear: the compiled decode steps', left for the compiler to pick. On the CPU in fp32 that is
  Inductor's C++ GEMM template, over a copy of each weight reordered into blocks of output rows
  (compiler/packed_weights.py).
- blocked_linear: the compiled prefill's, over that same reordered copy, so a compiled model holds each
  projection weight once, in the blocked layout, and never reads the plain one after loading.
- torch.ops.bucketserve.blocked_linear: the compiled CPU fp32 decode steps' where our kernel library builds
  for AVX-512 (kernels/blocked_linear.cpp), over the same blocked layout; it replaces the template there.
- quantized_linear: every form's, for a weight in the packed int8 / int4 layout (quantization/layout.py);
  with activations="int8", torch.ops.bucketserve.int8_activation_linear (kernels/int8_activation_linear.cpp).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kernels import library
from ..quantization.activations import reference_int8_activation_linear
from ..quantization.layout import PackedWeight, reference_linear


def dense_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T as a GEMM: oneDNN's for fp32 on the CPU, F.linear (MKL, cuBLAS) otherwise.

    On our 2-core AMD machine, F.linear's fp32 GEMM (MKL) read the weights at 7 to 8.5 GB/s for 4 to 16
    rows; oneDNN's, on the same plain weights, was 1.3x to 1.9x faster from 4 to 128 rows
    (docs/bench/matmul_forms.py, figures in docs/PERFORMANCE.md). AOTInductor emits the op as a direct call.
    """
    if x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [None], "")
    return F.linear(x, weight)


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


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, block_n: int) -> torch.Tensor:
    """x @ weight.T through weight reordered into [ceil(n / block_n), k, block_n], rows past n zero: the
    layout of compiler/packed_weights.block_rows, which the decoders' GEMM (our kernel, or Inductor's template) reads.

    Written as that reorder and then one small matmul per block. Compiled with freezing, Inductor folds the
    reorder into a constant of the graph; load time makes that constant the decoders' reordered copy. For
    prefill chunks of 16 to 128 rows this form stays near dense_linear on the plain weights, where the
    template itself falls far behind (docs/PERFORMANCE.md, docs/bench/matmul_forms.py blocked|template|onednn).
    """
    n, k = weight.shape
    reordered = blocked_weight(weight, block_n)
    out = torch.matmul(x.reshape(1, -1, k), reordered)  # [blocks, rows, block_n]
    return out.transpose(0, 1).reshape(*x.shape[:-1], -1)[..., :n]


def blocked_weight(weight: torch.Tensor, block_n: int) -> torch.Tensor:
    """weight [n, k] as [ceil(n / block_n), k, block_n], rows past n zero, in ops a compiler can fold
    (packed_weights.block_rows builds the same tensor at load time without the padded intermediate)."""
    n, k = weight.shape
    blocks = -(-n // block_n)
    return F.pad(weight, (0, 0, 0, blocks * block_n - n)).view(blocks, block_n, k).transpose(1, 2).contiguous()


class GraphForm:
    """How one forward is written: for the eager engine (EAGER); for a compiled decode step (COMPILED_DECODE,
    COMPILED_CPU_DECODE with the attention kernel, kernel_decode_form with both kernels); or for a compiled
    prefill reading weights in blocked form (GraphForm(block_sizes=...))."""

    def __init__(self, decode_attention: bool = False, compiler_gemm: bool = False,
                 block_sizes: dict[tuple[int, int], int] | None = None, attention_kernel: bool = False,
                 gemm_kernel_block_n: int | None = None):
        self.decode_attention = decode_attention  # multiply-and-sum attention (models.llama.decode_attention)
        self.attention_kernel = attention_kernel  # one decode token per row: torch.ops.bucketserve (kernels/)
        self.compiler_gemm = compiler_gemm  # F.linear, for the compiler to pick the GEMM
        self.block_sizes = dict(block_sizes or {})  # weight shape (n, k) -> block_n: blocked_linear
        # Every projection through torch.ops.bucketserve.blocked_linear over blocks of this many rows
        # (compiled with freezing, which folds each weight's reorder into a constant, as for the prefill).
        self.gemm_kernel_block_n = gemm_kernel_block_n

    def project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.gemm_kernel_block_n is not None:
            blocks = blocked_weight(weight, self.gemm_kernel_block_n)
            return torch.ops.bucketserve.blocked_linear(x, blocks, weight.shape[0])
        block_n = self.block_sizes.get(tuple(weight.shape))
        if block_n is not None:
            return blocked_linear(x, weight, block_n)
        return F.linear(x, weight) if self.compiler_gemm else dense_linear(x, weight)

    def project_quantized(self, x: torch.Tensor, packed: PackedWeight, activations: str | None = None) -> torch.Tensor:
        """x @ weight.T for a packed weight: the same GEMM in every form (quantized_linear)."""
        return quantized_linear(x, packed, activations)


EAGER = GraphForm()
COMPILED_DECODE = GraphForm(decode_attention=True, compiler_gemm=True)
# On the CPU in fp32, where the attention kernel builds (kernels/library.py) but not the GEMM kernel.
COMPILED_CPU_DECODE = GraphForm(decode_attention=True, compiler_gemm=True, attention_kernel=True)


def kernel_decode_form(block_n: int, attention_kernel: bool = True) -> GraphForm:
    """On the CPU in fp32 where both kernels build: attention and every projection through them (the attention
    as multiply-and-sum reductions instead where the kernel cannot read the cache's dtype)."""
    return GraphForm(decode_attention=True, attention_kernel=attention_kernel, gemm_kernel_block_n=block_n)
