"""The CPU GEMM kernel (kernels/blocked_linear.cpp) against F.linear, and the decoders that call it."""
from __future__ import annotations

import zipfile

import pytest
import torch
import torch.nn.functional as F

from bucketserve.compiler.packed_weights import block_rows
from bucketserve.kernels import library


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    path = library.build()
    assert path is not None, "the CPU kernels did not build (see the warning logged)"
    return path


def block_sizes() -> list[int]:
    """1 to 4 vectors a block: every register tile the kernel has, on this machine's vectors."""
    return [library.vector_floats() * vectors for vectors in (1, 2, 3, 4)]


@pytest.mark.parametrize("rows", [1, 3, 8, 9, 20])  # within one pass of 8 rows, and passes with a remainder
@pytest.mark.parametrize("n, k", [(576, 576), (192, 576), (576, 1536), (100, 48), (7, 33)])  # n past whole blocks
def test_kernel_matches_f_linear(rows, n, k):
    generator = torch.Generator().manual_seed(rows * 1000 + n)
    x, weight = torch.randn(rows, k, generator=generator), torch.randn(n, k, generator=generator)
    for block_n in block_sizes():
        got = torch.ops.bucketserve.blocked_linear(x, block_rows(weight, block_n), n)
        torch.testing.assert_close(got, F.linear(x, weight), rtol=1e-4, atol=1e-4)


def test_kernel_keeps_leading_dimensions_and_takes_strided_input():
    x, weight = torch.randn(2, 5, 3, 64).transpose(1, 2), torch.randn(40, 64)
    got = torch.ops.bucketserve.blocked_linear(x, block_rows(weight, block_sizes()[1]), 40)
    assert got.shape == (2, 3, 5, 40)
    torch.testing.assert_close(got, F.linear(x, weight), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, weight_blocks_shape, n, dtype, message",
    [
        ((2, 64), (3, 64, 16), 40, torch.float64, "float32"),
        ((2, 32), (3, 64, 16), 40, torch.float32, "x has 32 features, the weight 64"),
        ((2, 64), (3, 64, 16), 49, torch.float32, "n = 49 does not fit 3 blocks of 16"),
        ((2, 64), (3, 64, 12), 30, torch.float32, "block_n 12 must be"),
        ((2, 64), (64, 16), 16, torch.float32, r"must be \[ceil"),
    ],
)
def test_kernel_refuses_bad_input_with_a_reason(x_shape, weight_blocks_shape, n, dtype, message):
    x, blocks = torch.zeros(x_shape, dtype=dtype), torch.zeros(weight_blocks_shape, dtype=dtype)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bucketserve.blocked_linear(x, blocks, n)


def test_compiled_decoders_multiply_through_the_kernel_where_it_runs(compiled_dir):
    """Where the kernel serves this machine's decoders, every decoder graph calls it and no other GEMM."""
    if library.gemm_block_n() is None:
        pytest.skip("the GEMM kernel does not serve this machine's vectors; decoders keep Inductor's template")
    for package in sorted((compiled_dir / "graphs").glob("decoder_batch_*.pt2")):
        with zipfile.ZipFile(package) as archive:  # the generated C++ and its table of calls to external ops
            sources = b"".join(archive.read(name) for name in archive.namelist() if name.endswith((".cpp", ".json")))
        assert b"bucketserve::blocked_linear" in sources, package.name
        assert b"micro_gemm" not in sources and b"mkldnn" not in sources, package.name  # the template's, oneDNN's
