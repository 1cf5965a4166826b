"""Time each decoder of a compiled directory at full context with the bench's own step-latency scenario.

    python docs/bench/step_latency_of_dir.py COMPILED_DIR [REPEATS]

Medians of REPEATS calls (default 5), every row at the last position, against each decoder's floor (the bytes
it reads over the bandwidth this machine measures first). To compare two versions of the code, compile the
same checkpoint with each (e.g. `git worktree add /tmp/before COMMIT`, then `PYTHONPATH=/tmp/before bucketserve
compile CHECKPOINT OUT --decoder-batch-sizes 8 4 1`) and run this over both directories, alternately.
"""
import json
import sys

import torch

from benchmarks import roofline, scenarios
from benchmarks.options import BenchOptions
from bucketserve import AutoModelForCausalLM

torch.set_num_threads(2)
bandwidth = roofline.read_bandwidth()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
steps = scenarios.step_latency(model, BenchOptions(step_repeats=int(sys.argv[2]) if len(sys.argv) > 2 else 5),
                               bandwidth["bytes_per_second"])
for batch, step in steps.items():
    print(f"decoder {batch}: {step['median_seconds'] * 1e3:.1f} ms, floor {step['floor_seconds'] * 1e3:.1f} ms")
print(json.dumps({"memory_bandwidth": bandwidth, "steps": steps}, indent=1))
