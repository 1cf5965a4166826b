"""The activation-quantized kernel (kernels/int8_activation_linear.cpp), every path this CPU runs, against its
plain-torch reference (quantization/activations.py)."""
from __future__ import annotations

import pytest
import torch
from test_quantized_kernel import random_packed

from bucketserve.kernels import library
from bucketserve.quantization import activations, layout


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    path = library.build()
    assert path is not None, "the CPU kernels did not build (see the warning logged)"
    return path


def isas() -> list[str]:
    library.build()
    return list(torch.ops.bucketserve.int8_activation_isas())


def int8_activation_linear(x: torch.Tensor, packed: layout.PackedWeight, isa: str = "auto") -> torch.Tensor:
    n, k = packed.shape
    return torch.ops.bucketserve.int8_activation_linear(x, packed.qweight, packed.scales, packed.mins, n, k, isa)


def assert_matches_reference(got: torch.Tensor, x: torch.Tensor, packed: layout.PackedWeight) -> None:
    """Equal to the float64 reference up to the kernel's fp32 rounding: each group's integer dot product is
    exact, then scaled (and, for int4, its min's term added) with a few roundings, and the groups summed in
    fp32. So the error is at most (groups + 4) u times the sum of |d xq| (|scale q| + |min|). One wrong
    integer, or an activation quantized differently, moves a result by about |d scale|, above that bound."""
    n, k = packed.shape
    expected = activations.reference_int8_activation_linear(x, packed)
    xq, d = activations.quantize_activations(x.reshape(-1, k).float())
    x_abs = activations.dequantize_activations(xq, d, k).abs().float()
    scales, mins = layout.group_params(packed)
    magnitude = layout.unpack_values(packed).float() * scales.repeat_interleave(layout.GROUP, dim=1)[:, :k]
    magnitude = magnitude.abs()
    if mins is not None:
        magnitude = magnitude + mins.abs().repeat_interleave(layout.GROUP, dim=1)[:, :k]
    groups = -(-k // layout.GROUP)
    bound = (groups + 4) * torch.finfo(torch.float32).eps / 2 * (x_abs @ magnitude.T) + 1e-30
    assert got.shape == expected.shape
    excess = ((got.reshape(-1, n) - expected.reshape(-1, n)).abs() - bound).max().item()
    assert excess <= 0, f"the kernel is {excess} past the rounding bound"


def test_every_cpu_has_the_scalar_path_and_this_one_its_best_first():
    names = isas()
    assert names[-1] == "scalar"
    assert set(names) <= {"amx", "avx512_vnni", "avx_vnni", "avx2", "scalar"}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n, k", [(37, 40), (37, 70), (16, 32), (64, 576), (100, 48)])
def test_every_path_matches_the_reference(bits, n, k):
    packed = random_packed(bits, n, k, seed=n * k + bits)
    generator = torch.Generator().manual_seed(k)
    for isa in isas():
        for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 64]:  # every rows-a-pass count, then several passes
            x = torch.randn(rows, k, generator=generator)
            x[0, : min(k, 5)] = 0  # a row's first group with zeros in it
            assert_matches_reference(int8_activation_linear(x, packed, isa), x, packed)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_group_of_zeros_and_extreme_weights(bits):
    """A group of zero activations (d = 0) gives 0, not NaN; int8 weights of -128 and 127 (vpdpbusd's
    signed side, and the AVX2 path's |w| = 128) are exact."""
    n, k = 20, 96
    generator = torch.Generator().manual_seed(3)
    scales = (torch.rand(n, 3, generator=generator) * 0.1).half()
    if bits == 8:
        q = torch.where(torch.rand(n, k, generator=generator) < 0.5, -128, 127).to(torch.int8)
        packed = layout.pack_int8(q, scales)
    else:
        q = torch.where(torch.rand(n, k, generator=generator) < 0.5, 0, 15).to(torch.uint8)
        packed = layout.pack_int4(q, scales, (-8 * scales.float()).half())
    x = torch.randn(5, k, generator=generator) * 30
    x[:, 32:64] = 0
    for isa in isas():
        got = int8_activation_linear(x, packed, isa)
        assert torch.isfinite(got).all()
        assert_matches_reference(got, x, packed)


@pytest.mark.parametrize("bits", [8, 4])
def test_close_to_the_weight_only_kernel_not_equal(bits):
    """Quantizing the activations changes the result by well under 1% of its size (Gaussian inputs, SmolLM2's
    576 inputs), and does change it: the weight-only kernel stays the exact one."""
    packed = random_packed(bits, 64, 576, seed=11)
    x = torch.randn(8, 576, generator=torch.Generator().manual_seed(5))
    exact = x @ layout.dequantize(packed).T
    got = int8_activation_linear(x, packed)
    relative = ((got - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.01, relative


def test_keeps_leading_dimensions_and_takes_strided_input():
    packed = random_packed(4, 40, 64)
    for x in (torch.randn(2, 3, 64), torch.randn(2, 5, 3, 64).transpose(1, 2)):
        got = int8_activation_linear(x, packed)
        assert got.shape == (*x.shape[:-1], 40)
        assert_matches_reference(got.reshape(-1, 40), x.reshape(-1, 64), packed)


def test_an_unknown_path_is_refused_with_the_ones_there_are():
    packed = random_packed(8, 16, 32)
    with pytest.raises(RuntimeError, match="no path 'neon' on this CPU; it runs: auto, .*scalar"):
        int8_activation_linear(torch.zeros(1, 32), packed, "neon")
