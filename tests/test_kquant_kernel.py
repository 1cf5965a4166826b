"""The K layout's GEMM (kernels/kquant_linear.cpp) on each of its paths (the library as built for this machine:
AVX-512 here; the same file built for AVX2 and for no vector ISA into namespaces of their own) against the
layout's plain-torch reference, for every width of value (4, 5, 6 bits) and both sub-block sizes."""
from __future__ import annotations

import pytest
import torch
from torch.utils import cpp_extension

from bucketserve.kernels import library
from bucketserve.quantization import kquant_layout

SOURCE = library.SOURCES[0].with_name("kquant_linear.cpp")
# Flags of the variants beside the library (which is built for this machine's own ISA by library.build()).
VARIANT_FLAGS = {"avx2": ["-mavx2", "-mfma", "-mf16c", "-mno-avx512f"], "scalar": ["-mno-avx", "-mno-avx2", "-mno-fma"]}
FORMS = [(4, 32), (5, 32), (6, 16), (5, 16), (6, 32)]  # (bits, group): Q4_K, Q5_K / Q5_0 / Q5_1, Q6_K, and the rest


def _has_avx2() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.fixture(scope="module", params=["library", "avx2", "scalar"])
def kernel(request):
    """The op of one path."""
    if request.param == "library":
        assert library.build() is not None, "the CPU kernels did not build (see the warning logged)"
        return torch.ops.bucketserve.kquant_linear
    if request.param == "avx2" and not _has_avx2():
        pytest.skip("this CPU has no AVX2")
    namespace = f"bucketserve_kquant_test_{request.param}"
    cpp_extension.load(namespace, [str(SOURCE)], is_python_module=False,
                       extra_cflags=["-O3", *VARIANT_FLAGS[request.param], f"-DBUCKETSERVE_KQUANT_NAMESPACE={namespace}"])
    return getattr(torch.ops, namespace).kquant_linear


def random_kpacked(bits: int, group: int, n: int, k: int, seed: int = 0) -> kquant_layout.KPackedWeight:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (n, k), generator=generator, dtype=torch.uint8)
    scales = torch.rand(n, k // group, generator=generator) * 0.01
    mins = torch.randn(n, k // group, generator=generator) * 0.1
    return kquant_layout.pack_kquant(q, scales, mins, bits)


def call(kernel, x: torch.Tensor, packed: kquant_layout.KPackedWeight) -> torch.Tensor:
    n, k = packed.shape
    return kernel(x, packed.qweight, packed.qhigh, packed.scales, packed.mins, n, k)


def assert_matches_reference(got: torch.Tensor, x: torch.Tensor, packed: kquant_layout.KPackedWeight) -> None:
    """Equal up to fp32 summation order (as tests/test_quantized_kernel.py argues): within 2 k u sum |x_i w_i|
    of the reference; one wrong value would move a sum by about the mean |x_i w_i|, far past that."""
    weight = kquant_layout.dequantize(packed)
    expected = x @ weight.T
    bound = 2 * packed.shape[1] * (torch.finfo(torch.float32).eps / 2) * (x.abs() @ weight.abs().T)
    assert got.shape == expected.shape
    excess = ((got - expected).abs() - bound).max().item()
    assert excess <= 0, f"the kernel is {excess} past the summation-order bound"


@pytest.mark.parametrize("bits, group", FORMS)
@pytest.mark.parametrize("n, k", [(37, 256), (16, 32), (100, 512), (64, 576)])
def test_every_path_matches_the_reference(kernel, bits, group, n, k):
    packed = random_kpacked(bits, group, n, k, seed=n * k + bits + group)
    generator = torch.Generator().manual_seed(k)
    for rows in [1, 2, 3, 4, 5, 8, 9, 33]:  # the few-rows path's every count, then the tile's
        x = torch.randn(rows, k, generator=generator)
        assert_matches_reference(call(kernel, x, packed), x, packed)


def test_leading_dimensions_are_kept_and_strided_input_is_taken(kernel):
    packed = random_kpacked(5, 32, 40, 64)
    for x in (torch.randn(2, 3, 64), torch.randn(2, 5, 3, 64).transpose(1, 2)):
        got = call(kernel, x, packed)
        assert got.shape == (*x.shape[:-1], 40)
        assert_matches_reference(got.reshape(-1, 40), x.reshape(-1, 64), packed)


def test_the_op_traces_under_torch_export():
    assert library.build() is not None
    packed = random_kpacked(6, 16, 24, 64)

    class Projection(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name in ("qweight", "qhigh", "scales", "mins"):
                self.register_buffer(name, getattr(packed, name))

        def forward(self, x):
            return torch.ops.bucketserve.kquant_linear(x, self.qweight, self.qhigh, self.scales, self.mins, 24, 64)

    x = torch.randn(2, 64)
    program = torch.export.export(Projection(), (x,))
    torch.testing.assert_close(program.module()(x), Projection()(x), rtol=0, atol=0)


def _bad_inputs():
    five, four = random_kpacked(5, 32, 37, 64), random_kpacked(4, 32, 37, 64)
    x = torch.zeros(2, 64)
    return [
        ((x.double(), *five[:4], 37, 64), "float32 x"),
        ((torch.zeros(2, 48), *five[:4], 37, 48), r"qweight must be uint8 \[ceil\(n / 16\), k / 2 = 24, 16\]"),
        ((x, *five[:4], 49, 64), "n = 49 does not fit qweight's 3 blocks of 16 rows"),
        ((x, five.qweight, five.qhigh[:, :1], *five[2:4], 37, 64), r"qhigh must be uint8 \[3, k / 8 = 8"),
        ((x, four.qweight, None, four.scales.half(), four.mins, 37, 64), "scales must be float32"),
        ((x, four.qweight, None, four.scales, four.mins[:, :1], 37, 64), "mins must be float32"),
        ((torch.zeros(2, 40), four.qweight[:, :20], None, four.scales, four.mins, 37, 40), "k = 40 is not a whole"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_inputs())))
def test_bad_input_is_refused_with_a_reason(case):
    assert library.build() is not None
    args, message = _bad_inputs()[case]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.bucketserve.kquant_linear(*args)
