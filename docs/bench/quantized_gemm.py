"""The quantized GEMM kernel (torch.ops.bucketserve.quantized_linear, int8 and int4) against the fp32 one
(torch.ops.bucketserve.blocked_linear on the same values' fp32 blocks), at SmolLM2-135M's projection shapes,
interleaved in one process, 2 threads. An indicative speed check, not a test:

    python docs/bench/quantized_gemm.py [ROWS ...] [--mb MB] [--rounds R] [--threads T] [--cpu-clock]

For each shape (k=576 n=1536: gate/up; k=1536 n=576: down; k=576 n=49152: lm_head) and each row count
(default 1 4 8 128), each kind multiplies the rows through a chain of distinct copies of its weight holding
about MB megabytes in all (default 256; 32 at 128 rows, which are bound by arithmetic), so the weights come
from memory as in a decode step, not from the cache. Each round (default 7) times one pass over the chain of
every kind, alternately; the medians are printed per call: ms, the weight bytes read per second (qweight,
scales and mins; fp32 blocks), and the time against fp32's. Our machine is shared and loaded: compare the
ratios, not the absolute figures, and only within one run. On a machine that busy, `--threads 1 --cpu-clock`
times the calls by this process's CPU time, which leaves out the time other processes hold the core (not
their share of the memory's bandwidth): the per-core figures the kernels were tuned with.
"""
import argparse
import time

import torch

from bucketserve.kernels import library
from bucketserve.models.projections import blocked_weight
from bucketserve.quantization import layout

SHAPES = [(576, 1536), (1536, 576), (576, 49152)]  # (k, n)


def packed_weights(k: int, n: int, generator: torch.Generator) -> dict[str, tuple]:
    """Each kind's call arguments for one weight with the same dequantized values in every kind."""
    groups = -(-k // layout.GROUP)
    scales = (torch.rand(n, groups, generator=generator) * 0.02).half()
    q = torch.randint(-8, 8, (n, k), generator=generator, dtype=torch.int8)  # int4's range, as Q4_0 stores it
    int8 = layout.pack_int8(q, scales)
    int4 = layout.pack_int4((q + 8).to(torch.uint8), scales, -8 * scales)
    return {
        "fp32": (blocked_weight(layout.dequantize(int8), library.gemm_block_n()),),
        "int8": (int8.qweight, int8.scales, None),
        "int4": (int4.qweight, int4.scales, int4.mins),
    }


def call(kind: str, x: torch.Tensor, weight: tuple, k: int, n: int) -> torch.Tensor:
    if kind == "fp32":
        return torch.ops.bucketserve.blocked_linear(x, weight[0], n)
    return torch.ops.bucketserve.quantized_linear(x, *weight, n, k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", type=int, default=[1, 4, 8, 128])
    parser.add_argument("--mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-clock", action="store_true", help="time by the process's CPU time, not the wall's")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_clock else time.perf_counter
    assert library.build() is not None and library.gemm_block_n() is not None, "needs the AVX-512 kernels"
    generator = torch.Generator().manual_seed(0)
    print(f"{'k':>5} {'n':>6} {'rows':>4} {'kind':>4} {'ms':>8} {'GB/s':>6} {'vs fp32':>7}")
    for k, n in SHAPES:
        one = packed_weights(k, n, generator)
        for rows in args.rows:
            x = torch.randn(rows, k, generator=generator)
            megabytes = args.mb if rows <= 8 else min(args.mb, 32)
            chains, weight_bytes = {}, {}
            for kind, weight in one.items():
                weight_bytes[kind] = sum(t.numel() * t.element_size() for t in weight if t is not None)
                copies = max(1, megabytes * 2**20 // weight_bytes[kind])
                chains[kind] = [tuple(None if t is None else t.clone() for t in weight) for _ in range(copies)]
            expected = call("fp32", x, one["fp32"], k, n)
            for kind, weight in one.items():  # the same values: agreement up to summation order
                torch.testing.assert_close(call(kind, x, weight, k, n), expected, rtol=1e-4, atol=1e-3)
            seconds = {kind: [] for kind in chains}
            for _ in range(args.rounds):
                for kind, chain in chains.items():
                    call(kind, x, chain[0], k, n)  # warm: the thread pool, the first call's allocations
                    started = clock()
                    for weight in chain:
                        call(kind, x, weight, k, n)
                    seconds[kind].append((clock() - started) / len(chain))
            medians = {kind: sorted(times)[len(times) // 2] for kind, times in seconds.items()}
            for kind, median in medians.items():
                print(f"{k:>5} {n:>6} {rows:>4} {kind:>4} {median * 1e3:8.3f} {weight_bytes[kind] / median / 1e9:6.1f} "
                      f"{median / medians['fp32']:7.2f}")
            del chains


if __name__ == "__main__":
    main()
