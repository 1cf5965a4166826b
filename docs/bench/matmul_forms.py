"""Every weight matrix of the bench model (30 layers' q, k, v, o, gate, up, down, then the lm_head),
random, applied to B rows in a chain, timed seven ways, 2 threads:

    python docs/bench/matmul_forms.py mkl B       # F.linear, uncompiled (MKL's GEMV / small GEMM)
    python docs/bench/matmul_forms.py onednn B    # models.llama.dense_linear, uncompiled (oneDNN's GEMM)
    python docs/bench/matmul_forms.py packed B    # oneDNN's GEMM on weights reordered into its blocked layout
    python docs/bench/matmul_forms.py inductor B  # F.linear under torch.compile (Inductor calls MKL too)
    python docs/bench/matmul_forms.py template B  # F.linear compiled as bucketserve compiles decoders:
                                                  # AOTInductor, Inductor's C++ GEMM template (packed_weights)
    python docs/bench/matmul_forms.py blocked B   # models.projections.blocked_linear (block 48) compiled as
                                                  # bucketserve compiles the prefill: AOTInductor with freezing
    python docs/bench/matmul_forms.py kernel B    # torch.ops.bucketserve.blocked_linear (kernels/blocked_linear.cpp,
                                                  # block 48) compiled as bucketserve compiles CPU fp32 decoders

A check of the projections alone; the whole decoder graph is decoder_forms.py.
"""
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.timing import sorted_seconds
from bucketserve.compiler.aoti import compile_graph, load_graph
from bucketserve.compiler.graph_specs import GraphSpec
from bucketserve.compiler.packed_weights import FOLD_CONFIGS, GEMM_TEMPLATE_CONFIGS
from bucketserve.kernels import library
from bucketserve.models.projections import blocked_linear, blocked_weight, dense_linear

torch.set_num_threads(2)
HIDDEN, INTERMEDIATE, Q, KV, LAYERS, VOCAB = 576, 1536, 576, 192, 30, 49152
SHAPES = ((Q, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, Q), (INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE))
form, rows = sys.argv[1], int(sys.argv[2])
if form == "kernel":
    library.build()
linear = {"onednn": dense_linear, "packed": dense_linear, "blocked": lambda x, w: blocked_linear(x, w, 48),
          "kernel": lambda x, w: torch.ops.bucketserve.blocked_linear(x, blocked_weight(w, 48), w.shape[0])}.get(form, F.linear)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(n, k) * 0.02) for _ in range(LAYERS) for n, k in SHAPES])
        self.head = nn.Parameter(torch.randn(VOCAB, HIDDEN) * 0.02)
        # packed: a second, blocked copy of every weight (oneDNN's opaque layout, so not a parameter)
        reorder = (lambda w: torch.ops.mkldnn._reorder_linear_weight(w.detach(), rows)) if form == "packed" else None
        self.packed = [reorder(w) for w in [*self.weights, self.head]] if reorder else None

    def forward(self, x):
        weights = self.packed or [*self.weights, self.head]
        for layer in range(LAYERS):
            q, k, v, o, gate, up, down = weights[7 * layer : 7 * layer + 7]
            a = linear(x, q) + linear(x, k).sum(-1, keepdim=True) + linear(x, v).sum(-1, keepdim=True)
            x = x + linear(a, o)
            x = x + linear(F.silu(linear(x, gate)) * linear(x, up), down)
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        return linear(x, weights[-1])


chain = Chain().eval()
x = torch.randn(rows, HIDDEN)
if form in ("template", "blocked", "kernel"):
    package = Path(tempfile.mkdtemp()) / "chain.pt2"
    configs = GEMM_TEMPLATE_CONFIGS if form == "template" else FOLD_CONFIGS
    compile_graph(GraphSpec("chain", chain, (x,), None, configs), package)
    run = load_graph(package, dict(chain.named_parameters()))
else:
    run = torch.compile(chain) if form == "inductor" else chain
with torch.no_grad():
    times = sorted_seconds(lambda: run(x), repeats=15)
weight_bytes = (LAYERS * sum(n * k for n, k in SHAPES) + VOCAB * HIDDEN) * 4
print(f"{form} rows={rows}: median {times[7] * 1e3:.1f} ms (min {times[0] * 1e3:.1f}), weights read at "
      f"{weight_bytes / times[7] / 1e9:.1f} GB/s")
