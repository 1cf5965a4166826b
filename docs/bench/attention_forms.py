"""The decode attention of the bench model (30 layers, 3 KV heads of 64, 3 query heads per KV head) over
one context length, in three forms, 2 threads:

    python docs/bench/attention_forms.py ROWS broadcast|per-head|kernel [CONTEXT_LEN]

broadcast: one multiply-and-sum broadcast over the query heads of a KV group (models/llama.py before
commit "Decode attention: one reduction per query head"), under torch.compile. per-head: one reduction per
query head, stacked (models.llama.decode_attention, what compiled decoders ran before the kernel and still
run off the CPU or outside fp32), under torch.compile. kernel: torch.ops.bucketserve.paged_decode_attention
(kernels/paged_attention.cpp, what compiled CPU fp32 decoders call), one call per layer. Each row reads its own 2048-position block; every row sits at
CONTEXT_LEN - 1 (default 2048). Prints the median time and the context bytes read per second.
"""
import sys

import torch

from benchmarks.timing import sorted_seconds
from bucketserve.kernels import library
from bucketserve.models.llama import decode_attention

torch.set_num_threads(2)
rows, form = int(sys.argv[1]), sys.argv[2]
context_len = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
KV_HEADS, GROUPS, HEAD_DIM, BLOCK, LAYERS = 3, 3, 64, 2048, 30
torch.manual_seed(0)
cache = torch.randn(LAYERS, 2, (rows + 1) * BLOCK, KV_HEADS, HEAD_DIM)
query = torch.randn(rows, 1, KV_HEADS * GROUPS, HEAD_DIM)
tables = torch.arange(1, rows + 1).view(rows, 1)
positions = torch.full((rows,), context_len - 1)


def broadcast(q, keys, values, mask, num_kv_heads):
    q = q.view(rows, 1, num_kv_heads, GROUPS, HEAD_DIM)
    scores = (q * keys.unsqueeze(3)).sum(-1) * HEAD_DIM**-0.5
    probs = torch.softmax(scores.masked_fill(~mask.view(rows, -1, 1, 1), float("-inf")), dim=1)
    return (probs.unsqueeze(-1) * values.unsqueeze(3)).sum(1)


attend = broadcast if form == "broadcast" else decode_attention  # the kernel's reference too


def every_layer(q, cache, context_positions):
    slots = tables[:, context_positions // BLOCK] * BLOCK + context_positions % BLOCK
    mask = context_positions.view(1, -1) <= positions.view(-1, 1)
    return torch.stack([attend(q, cache[layer, 0][slots], cache[layer, 1][slots], mask, KV_HEADS) for layer in range(LAYERS)])


def every_layer_kernel(q, cache, context_positions):
    return [torch.ops.bucketserve.paged_decode_attention(q[:, 0], cache, layer, tables, positions, BLOCK) for layer in range(LAYERS)]


context_positions = torch.arange(context_len)
if form == "kernel":
    assert library.build() is not None, "the kernel did not build"
    compiled = every_layer_kernel
    reference = torch.compile(every_layer, dynamic=False)(query, cache, context_positions)
    assert torch.allclose(torch.stack(compiled(query, cache, context_positions)).squeeze(2), reference.squeeze(2), atol=1e-5)
else:
    compiled = torch.compile(every_layer, dynamic=False)
times = sorted_seconds(lambda: compiled(query, cache, context_positions), repeats=7)
context_bytes = rows * context_len * KV_HEADS * HEAD_DIM * 4 * 2 * LAYERS
print(f"{form}, {rows} rows, context {context_len}: median {times[3] * 1e3:.1f} ms, "
      f"{context_bytes / times[3] / 1e9:.1f} GB/s of {context_bytes / 1e6:.0f} MB")
