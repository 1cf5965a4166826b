"""T4 alone: the eager engine's decoders (compiler="eager": the same model code, uncompiled) against the
compiled [8, 4, 1] decoders, at full context, with the bench's own step-latency scenario, one after the
other in one process, on the bench's default model and options.

    python docs/bench/eager_step_latency.py COMPILED_DIR [REPEATS]   # COMPILED_DIR: a bench [8, 4, 1] directory
"""
import json
import sys

import torch

from bucketserve import AutoModelForCausalLM
from bucketserve.bench import artifacts, roofline, scenarios
from bucketserve.bench.options import BUCKETS, BenchOptions

torch.set_num_threads(2)
options = BenchOptions(step_repeats=int(sys.argv[2]) if len(sys.argv) > 2 else 5)
bandwidth = roofline.read_bandwidth()["bytes_per_second"]
compiled = AutoModelForCausalLM.from_pretrained(sys.argv[1])
eager = artifacts.load_eager(options, BUCKETS).model
results = {name: scenarios.step_latency(model, options, bandwidth) for name, model in (("compiled", compiled), ("eager", eager))}
for batch in results["compiled"]:
    c, e = results["compiled"][batch]["median_seconds"], results["eager"][batch]["median_seconds"]
    print(f"decoder {batch}: compiled {c * 1e3:.1f} ms, eager {e * 1e3:.1f} ms, eager / compiled {e / c:.2f}")
print(json.dumps({"bytes_per_second": bandwidth, **results}, indent=1))
