"""One GEMV (batch 1) of SmolLM2's weight shapes through each packed layout's kernel, on one thread, timed by the
process's CPU time (on a shared machine wall time measures the neighbours): the int4 / int8 layouts'
quantized_linear (what our Q4_0 / Q8_0 copies run) beside kquant_linear's 4-bit (Q4_K), 5-bit (Q5_0 / Q5_1 /
Q5_K) and 6-bit (Q6_K) forms, on random values.

    python -m benchmarks.kquant_kernel_speed
"""
from __future__ import annotations

import time

import torch

from bucketserve.kernels import library
from bucketserve.quantization import kquant_layout, layout

SHAPES = [(1536, 576), (576, 1536), (49152, 576)]  # gate/up, down, the tied lm_head
K_FORMS = [(4, 32), (5, 32), (6, 16)]


def cpu_microseconds(call, repeats: int) -> float:
    call()
    started = time.process_time()
    for _ in range(repeats):
        call()
    return (time.process_time() - started) / repeats * 1e6


def main() -> None:
    if library.build() is None:
        raise SystemExit("the kernel library did not build")
    torch.set_num_threads(1)
    for n, k in SHAPES:
        x = torch.randn(1, k)
        repeats = 20 if n > 10000 else 300
        int4 = layout.pack_int4(torch.randint(0, 16, (n, k), dtype=torch.uint8), (torch.rand(n, k // 32) * 0.01).half(),
                                torch.randn(n, k // 32).half())
        int8 = layout.pack_int8(torch.randint(-127, 128, (n, k), dtype=torch.int8), (torch.rand(n, k // 32) * 0.01).half())
        line = f"{n:6d} x {k:4d}:"
        for name, packed in (("int4", int4), ("int8", int8)):
            us = cpu_microseconds(lambda p=packed, x=x, n=n, k=k: torch.ops.bucketserve.quantized_linear(x, *p[:3], n, k), repeats)
            line += f"  {name} {us:7.0f} us"
        for bits, group in K_FORMS:
            q = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8)
            p = kquant_layout.pack_kquant(q, torch.rand(n, k // group) * 0.01, torch.randn(n, k // group) * 0.1, bits)
            us = cpu_microseconds(lambda p=p, x=x, n=n, k=k: torch.ops.bucketserve.kquant_linear(
                x, p.qweight, p.qhigh, p.scales, p.mins, n, k), repeats)
            line += f"  k{bits}/{group} {us:7.0f} us"
        print(line, flush=True)


if __name__ == "__main__":
    main()
