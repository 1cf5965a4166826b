"""One decoder graph of the bench model, compiled as bucketserve compiles it (torch.export + AOTInductor),
with its projections through Inductor's C++ GEMM template (template: what bucketserve does on the CPU),
through models.projections.dense_linear (onednn: oneDNN, as the eager engine does) or through Inductor's default for
F.linear (mkl: an MKL call), timed at a given context length, 2 threads:

    python docs/bench/decoder_forms.py CHECKPOINT_DIR BATCH template|onednn|mkl [CONTEXT_LEN]

CHECKPOINT_DIR: the bench's cached ~/.cache/bucketserve/bench/checkpoint-smollm2-135m-* directory. Every
row sits at position CONTEXT_LEN - 1 (default 2048: the full context).
"""
import sys
import tempfile
from pathlib import Path

import torch

from bucketserve.bench.timing import sorted_seconds
from bucketserve.checkpoints.safetensors_checkpoint import map_safetensors, read_hf_config
from bucketserve.compiler.aoti import compile_graph, load_graph
from bucketserve.compiler.graph_specs import decoder_name, decoder_specs, graph_constants
from bucketserve.config import build_compile_config
from bucketserve.models.config import ModelConfig
from bucketserve.models.projections import GraphForm
from bucketserve.runtime.kv_cache import KVCache
from bucketserve.runtime.weights import build_model

torch.set_num_threads(2)
checkpoint, batch, form = Path(sys.argv[1]).expanduser(), int(sys.argv[2]), sys.argv[3]
context_len = int(sys.argv[4]) if len(sys.argv) > 4 else 2048
model_config = ModelConfig.from_hf_dict(read_hf_config(checkpoint))
compile_config = build_compile_config(dict(batch_size=8, max_seq_len=2048, decoder_batch_sizes=[batch, 8]), model_config)
model = build_model(model_config, compile_config, map_safetensors(checkpoint).tensors, torch.device("cpu"))
cache = KVCache(model, compile_config, torch.device("cpu"))
cache.tensor.normal_()
spec = next(s for s in decoder_specs(model, compile_config, cache.tensor) if s.name == decoder_name(batch))
if form == "onednn":  # the projections as the eager engine multiplies
    spec.module.form = GraphForm(decode_attention=True)
if form != "template":
    spec.inductor_configs = {}
package = Path(tempfile.mkdtemp()) / "decoder.pt2"
compile_graph(spec, package)
graph = load_graph(package, graph_constants(spec.module))  # reorders the weights the template needs
last = context_len - 1
tables = torch.tensor([[1 + row] for row in range(batch)])  # one 2048-position block per row
inputs = (torch.ones(batch, dtype=torch.long), torch.full((batch,), last), tables[:, 0] * 2048 + last, tables,
          torch.arange(context_len), cache.tensor)
times = sorted_seconds(lambda: graph(*inputs), repeats=7)
print(f"decoder {batch}, {form}, context {context_len}: median {times[3] * 1e3:.1f} ms (min {times[0] * 1e3:.1f})")
