"""The quantized GEMM kernel (kernels/quantized_linear.cpp) against the layout's plain-torch reference."""
from __future__ import annotations

import pytest
import torch

from bucketserve.kernels import library
from bucketserve.quantization import layout


@pytest.fixture(scope="module", autouse=True)
def kernel_library():
    path = library.build()
    assert path is not None, "the CPU kernels did not build (see the warning logged)"
    return path


def random_packed(bits: int, n: int, k: int, seed: int = 0) -> layout.PackedWeight:
    """Random integers and float16 scales (a few of them subnormal, as small GGUF scales are), packed."""
    generator = torch.Generator().manual_seed(seed)
    groups = -(-k // layout.GROUP)
    scales = (torch.rand(n, groups, generator=generator) * 0.1).half()
    scales.view(-1)[::7] = torch.tensor(3e-6).half()  # subnormal in float16
    if bits == 8:
        return layout.pack_int8(torch.randint(-128, 128, (n, k), generator=generator, dtype=torch.int8), scales)
    mins = (torch.randn(n, groups, generator=generator) * 0.4).half()
    return layout.pack_int4(torch.randint(0, 16, (n, k), generator=generator, dtype=torch.uint8), scales, mins)


def quantized_linear(x: torch.Tensor, packed: layout.PackedWeight) -> torch.Tensor:
    n, k = packed.shape
    return torch.ops.bucketserve.quantized_linear(x, packed.qweight, packed.scales, packed.mins, n, k)


def assert_matches_reference(got: torch.Tensor, x: torch.Tensor, packed: layout.PackedWeight) -> None:
    """Equal up to fp32 summation order: the kernel and the reference add the same k exact products
    (dequantized values are exact in fp32) in different orders, and two such sums differ by at most
    2 k u sum |x_i w_i| (u the unit roundoff). One wrong weight value would move a sum by about the
    mean |x_i w_i|, far above that bound for these k."""
    weight = layout.dequantize(packed)
    expected = x @ weight.T
    k = packed.shape[1]
    unit_roundoff = torch.finfo(torch.float32).eps / 2
    bound = 2 * k * unit_roundoff * (x.abs() @ weight.abs().T)
    assert got.shape == expected.shape
    excess = ((got - expected).abs() - bound).max().item()
    assert excess <= 0, f"the kernel is {excess} past the summation-order bound"


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize(
    "n, k",
    [
        (37, 40),  # odd n, not a whole block of 16; k a group and a part of one
        (37, 70),  # k past two groups, odd: int4's last pair holds one value
        (16, 32),  # one block, one group
        (64, 576),  # SmolLM2's hidden size: many groups
        (100, 48),  # more blocks than one tile of the many-rows path, and a partial tile
    ],
)
def test_kernel_matches_the_reference(bits, n, k):
    packed = random_packed(bits, n, k, seed=n * k + bits)
    generator = torch.Generator().manual_seed(k)
    for rows in [1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 128]:  # the decode path's every row count, then the tile's
        x = torch.randn(rows, k, generator=generator)
        assert_matches_reference(quantized_linear(x, packed), x, packed)


@pytest.mark.parametrize("bits", [8, 4])
def test_kernel_keeps_leading_dimensions_and_takes_strided_input(bits):
    packed = random_packed(bits, 40, 64)
    for x in (torch.randn(2, 3, 64), torch.randn(2, 5, 3, 64).transpose(1, 2)):  # 6 rows, 30 rows
        got = quantized_linear(x, packed)
        assert got.shape == (*x.shape[:-1], 40)
        assert_matches_reference(got.reshape(-1, 40), x.reshape(-1, 64), packed)


def test_padding_never_leaks_into_the_outputs():
    """Inputs past k and rows past n are stored as zeros: huge inputs must not turn them into inf or NaN."""
    packed = random_packed(4, 20, 33)
    x = torch.full((3, 33), 1e30)
    got = quantized_linear(x, packed)
    assert got.shape == (3, 20)
    assert_matches_reference(got, x, packed)


@pytest.mark.parametrize("op", ["quantized_linear", "int8_activation_linear"])  # the weight-only and activation-quantized GEMMs
def test_kernel_traces_under_torch_export(op):
    packed = random_packed(4, 24, 40)

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("qweight", packed.qweight)
            self.register_buffer("scales", packed.scales)
            self.register_buffer("mins", packed.mins)

        def forward(self, x):
            return getattr(torch.ops.bucketserve, op)(x, self.qweight, self.scales, self.mins, 24, 40)

    x = torch.randn(2, 40)
    program = torch.export.export(Projection(), (x,))
    torch.testing.assert_close(program.module()(x), Projection()(x), rtol=0, atol=0)


def _bad_inputs():
    int8, int4 = random_packed(8, 37, 40), random_packed(4, 37, 40)
    x = torch.zeros(2, 40)
    return [
        ((x.double(), *int8[:3], 37, 40), "float32 x"),
        ((torch.zeros(2, 41), *int8[:3], 37, 40), "x has 41 features, the weight k = 40"),
        ((torch.zeros(2, 80), *int8[:3], 37, 80), "qweight holds 64 inputs a row, but k = 80 pads to 96"),
        ((x, *int8[:3], 49, 40), "n = 49 does not fit qweight's 3 blocks of 16 rows"),
        ((x, int8.qweight.float(), *int8[1:3], 37, 40), "qweight must be int8 .* or uint8"),
        ((x, int8.qweight[0], *int8[1:3], 37, 40), r"qweight must be \[ceil\(n / 16\), k_pad, 16\]"),
        ((x, int8.qweight, int8.scales.float(), None, 37, 40), r"scales must be float16 \[3, 2, 16\]"),
        ((x, int8.qweight, int8.scales[:, :1], None, 37, 40), r"scales must be float16 \[3, 2, 16\]"),
        ((x, int8.qweight, int8.scales, int4.mins, 37, 40), "int8 weights are symmetric: mins must be None"),
        ((x, int4.qweight, int4.scales, None, 37, 40), "int4 weights need mins"),
        ((x, int4.qweight, int4.scales, int4.mins[:2], 37, 40), "mins must be float16"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_kernel_refuses_bad_input_with_a_reason(case):
    args, message = _bad_inputs()[case]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bucketserve.quantized_linear(*args)
