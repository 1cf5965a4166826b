"""The attention kernel as this tree has it against the one of an earlier commit, timed interleaved in one
process, 2 threads:

    python docs/bench/attention_ab.py COMMIT ROWS [CONTEXT_LEN] [ROUNDS]

The bench model's attention (30 layers, 9 query heads over 3 KV heads of 64) for ROWS rows, every row at
CONTEXT_LEN - 1 (default 2048) in its own block. COMMIT's kernels/paged_attention.cpp is built beside this
tree's (its ops renamed into the namespace `before`), both are checked to agree, then each round (default
25) times one call per layer of each, alternately. Separate processes or runs one after another move by 10
to 30% on our shared machine; pairs taken this close together do not, so their medians compare.
"""
import functools
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

from benchmarks.timing import sorted_seconds
from bucketserve.kernels import library

torch.set_num_threads(2)
commit, rows = sys.argv[1], int(sys.argv[2])
context_len = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 25
KV_HEADS, GROUPS, HEAD_DIM, BLOCK, LAYERS = 3, 3, 64, 2048, 30

assert library.build() is not None, "this tree's kernel did not build"
source = subprocess.run(["git", "show", f"{commit}:bucketserve/kernels/paged_attention.cpp"], check=True,
                        capture_output=True, text=True, cwd=Path(__file__).parent).stdout
build_dir = Path(tempfile.mkdtemp(prefix="attention_ab_"))
(build_dir / "before.cpp").write_text(source.replace("TORCH_LIBRARY(bucketserve", "TORCH_LIBRARY(before")
                                      .replace("TORCH_LIBRARY_IMPL(bucketserve", "TORCH_LIBRARY_IMPL(before"))
library_flags = library.build_flags()
cpp_extension.load("attention_before", [str(build_dir / "before.cpp")], extra_cflags=library_flags,
                   build_directory=str(build_dir), is_python_module=False)

torch.manual_seed(0)
cache = torch.randn(LAYERS, 2, (rows + 1) * BLOCK, KV_HEADS, HEAD_DIM)
query = torch.randn(rows, KV_HEADS * GROUPS, HEAD_DIM)
tables = torch.arange(1, rows + 1).view(rows, 1)
positions = torch.full((rows,), context_len - 1)
kernels = {commit: torch.ops.before.paged_decode_attention, "this tree": torch.ops.bucketserve.paged_decode_attention}


def every_layer(kernel):
    return [kernel(query, cache, layer, tables, positions, BLOCK) for layer in range(LAYERS)]


outputs = [torch.stack(every_layer(kernel)) for kernel in kernels.values()]
torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
seconds = {name: [] for name in kernels}
for _ in range(rounds):
    for name, kernel in kernels.items():
        seconds[name] += sorted_seconds(functools.partial(every_layer, kernel), repeats=1, warmup=0)
context_bytes = rows * context_len * KV_HEADS * HEAD_DIM * 4 * 2 * LAYERS
for name, times in seconds.items():
    median = sorted(times)[len(times) // 2]
    print(f"{name}: {rows} rows, context {context_len}: median {median * 1e3:.1f} ms of {rounds} rounds, "
          f"{context_bytes / median / 1e9:.1f} GB/s of {context_bytes / 1e6:.0f} MB")
