"""Where the resident memory of a compiled directory lives, after loading it and after one call of every
graph (bench.memory.run_every_graph_once): anonymous pages (the KV cache, the reordered weights the
graphs read, the interpreter) and pages of files mapped into the process (the plain weights, which
bucketserve maps from model.safetensors and hands back after loading: resident only where read), 2 threads:

    python docs/bench/resident_after_load.py COMPILED_DIR
"""
import re
import sys

import torch

from benchmarks.memory import run_every_graph_once
from bucketserve import AutoModelForCausalLM

MiB = 1 << 20


def resident() -> dict[str, int]:
    rollup = open("/proc/self/smaps_rollup").read()
    kb = {key: int(re.search(rf"^{key}:\s+(\d+)", rollup, re.M).group(1)) for key in ("Rss", "Anonymous")}
    return {"rss": kb["Rss"] * 1024, "anonymous": kb["Anonymous"] * 1024, "file": (kb["Rss"] - kb["Anonymous"]) * 1024}


torch.set_num_threads(2)
before = resident()
runner = AutoModelForCausalLM.from_pretrained(sys.argv[1]).runner
after = resident()
run_every_graph_once(runner)
steps = resident()
print("MiB resident   before load  after load  after steps  growth")
for key in ("rss", "anonymous", "file"):
    print(f"{key:<12} {before[key] / MiB:>12.0f} {after[key] / MiB:>11.0f} {steps[key] / MiB:>12.0f} "
          f"{(steps[key] - before[key]) / MiB:>7.0f}")
print(f"weights {runner.weight_bytes / MiB:.0f} MiB, reordered for the graphs {runner.packed_weight_bytes / MiB:.0f} MiB, "
      f"KV cache {runner.kv_cache.nbytes / MiB:.0f} MiB")
