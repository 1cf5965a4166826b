"""Every weight matrix of the bench model (30 layers' q, k, v, o, gate, up, down, then the lm_head),
random, applied to B rows in a chain, timed five ways, 2 threads:

    python docs/bench/matmul_forms.py mkl B     # F.linear, uncompiled (MKL's GEMV / small GEMM)
    python docs/bench/matmul_forms.py onednn B  # models.llama.dense_linear, uncompiled (oneDNN's GEMM)
    python docs/bench/matmul_forms.py packed B  # oneDNN's GEMM on weights reordered into its blocked layout
    python docs/bench/matmul_forms.py fused B   # models.llama.rows_times_weight under torch.compile
    python docs/bench/matmul_forms.py inductor B  # F.linear under torch.compile (Inductor calls MKL too)

A check of the projections alone; the whole decoder graph is decoder_forms.py.
"""
import sys

import torch
import torch.nn.functional as F

from bucketserve.bench.timing import sorted_seconds
from bucketserve.models.llama import dense_linear, rows_times_weight

torch.set_num_threads(2)
HIDDEN, INTERMEDIATE, Q, KV, LAYERS, VOCAB = 576, 1536, 576, 192, 30, 49152
form, rows = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
layers = [[torch.randn(n, k) * 0.02 for n, k in ((Q, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, Q),
                                                   (INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))]
          for _ in range(LAYERS)]
head = torch.randn(VOCAB, HIDDEN) * 0.02
if form == "packed":  # a second, blocked copy of every weight (not what bucketserve does: see PERFORMANCE.md)
    layers = [[torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in layer] for layer in layers]
    head = torch.ops.mkldnn._reorder_linear_weight(head, rows)
linear = {"fused": rows_times_weight, "onednn": dense_linear, "packed": dense_linear}.get(form, F.linear)


def chain(x, layers, head):
    for q, k, v, o, gate, up, down in layers:
        a = linear(x, q) + linear(x, k).sum(-1, keepdim=True) + linear(x, v).sum(-1, keepdim=True)
        x = x + linear(a, o)
        x = x + linear(F.silu(linear(x, gate)) * linear(x, up), down)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    return linear(x, head)


run = chain if form in ("mkl", "onednn", "packed") else torch.compile(chain)
x = torch.randn(rows, HIDDEN)
times = sorted_seconds(lambda: run(x, layers, head), repeats=15)
weight_bytes = (sum(w.shape.numel() for layer in layers for w in layer) + head.shape.numel()) * 4
print(f"{form} rows={rows}: median {times[7] * 1e3:.1f} ms (min {times[0] * 1e3:.1f}), weights read at "
      f"{weight_bytes / times[7] / 1e9:.1f} GB/s")
