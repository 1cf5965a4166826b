"""How Inductor's C++ GEMM template splits a GEMM of ROWS rows over 2 threads, and what another split does:
24 random [1536, 576] weights (the bench model's gate/up shape, 85 MB, more than the caches hold) applied
to ROWS rows, compiled as bucketserve compiles decoders, median of 21, 2 threads:

    python docs/bench/gemm_thread_split.py ROWS default|M,N,K   # e.g. 8 1,2,1: all rows, columns split in 2

M,N,K sets Inductor's cpp.gemm_thread_factors (threads along rows, columns, and the inner dimension).
"""
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # compile afresh: the cache ignores the factors

from bucketserve.bench.timing import sorted_seconds  # noqa: E402
from bucketserve.compiler.aoti import compile_graph, load_graph  # noqa: E402
from bucketserve.compiler.graph_specs import GraphSpec  # noqa: E402
from bucketserve.compiler.packed_weights import GEMM_TEMPLATE_CONFIGS  # noqa: E402

torch.set_num_threads(2)
rows, factors = int(sys.argv[1]), sys.argv[2]
WEIGHTS, N, K = 24, 1536, 576


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(N, K) * 0.02) for _ in range(WEIGHTS)])

    def forward(self, x):
        return sum(F.linear(x, w).sum(-1, keepdim=True) for w in self.weights)


chain = Chain().eval()
x = torch.randn(rows, K)
configs = dict(GEMM_TEMPLATE_CONFIGS)
if factors != "default":
    configs["cpp.gemm_thread_factors"] = factors
package = Path(tempfile.mkdtemp()) / "chain.pt2"
compile_graph(GraphSpec("chain", chain, (x,), None, configs), package)
run = load_graph(package, dict(chain.named_parameters()))
with torch.no_grad():
    times = sorted_seconds(lambda: run(x), repeats=21)
print(f"rows={rows} factors={factors}: median {times[10] * 1e3:.2f} ms, weights read at "
      f"{WEIGHTS * N * K * 4 / times[10] / 1e9:.1f} GB/s")
