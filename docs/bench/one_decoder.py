"""Compile one decoder graph of the bench model with this tree's model code and time it at full context.

    python docs/bench/one_decoder.py BATCH CHECKPOINT_DIR   # the bench's cached checkpoint-smollm2-135m-* directory
"""
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)
from bucketserve.checkpoints.safetensors_checkpoint import map_safetensors, read_hf_config
from bucketserve.compiler import aoti
from bucketserve.compiler.graph_specs import decoder_specs, graph_constants
from bucketserve.config import build_compile_config
from bucketserve.models.config import ModelConfig
from bucketserve.models.llama import DecoderGraph
from bucketserve.runtime.kv_cache import KVCache
from bucketserve.runtime.weights import build_model

ck = Path(sys.argv[2]).expanduser()
mc = ModelConfig.from_hf_dict(read_hf_config(ck))
batch = int(sys.argv[1])
cc = build_compile_config(dict(batch_size=8, max_seq_len=2048, decoder_batch_sizes=[batch, 8]), mc)
model = build_model(mc, cc, map_safetensors(ck).tensors, torch.device("cpu"))
cache = KVCache(model, cc, torch.device("cpu"))
spec = [s for s in decoder_specs(model, cc, cache.tensor) if s.name == f"decoder_batch_{batch}"][0]
t0 = time.perf_counter(); aoti.compile_graph(spec, Path(f"/tmp/decoder_batch_{batch}.pt2")); print(f"compile {time.perf_counter()-t0:.1f}s", flush=True)
g = aoti.load_graph(Path(f"/tmp/decoder_batch_{batch}.pt2"), graph_constants(DecoderGraph(model)))
bps = cc.blocks_per_sequence
tables = torch.tensor([[1 + r] for r in range(batch)]); pos = torch.full((batch,), 2047); slots = tables[:, 0] * 2048 + 2047
ids = torch.ones(batch, dtype=torch.long)
context = torch.arange(2048)  # the full context: every row at position 2047
cache.tensor.normal_()
with torch.inference_mode():
    eager = DecoderGraph(model)(ids, pos, slots, tables, context, cache.tensor.clone())
    out = g(ids, pos, slots, tables, context, cache.tensor)
    print("max |compiled - eager|", (out - eager).abs().max().item(), "scale", eager.abs().max().item())
    ts = []
    for _ in range(8):
        t0 = time.perf_counter(); g(ids, pos, slots, tables, context, cache.tensor); ts.append(time.perf_counter() - t0)
ts.sort(); print(f"decoder {batch}: median {ts[4]*1e3:.1f} ms min {ts[0]*1e3:.1f} ms", flush=True)
