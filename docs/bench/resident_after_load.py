"""Where the resident memory after loading a compiled directory lives: anonymous pages (the KV cache, the
GEMM template's reordered weights, the interpreter) and pages of files mapped into the process (the
weights, which safetensors maps from model.safetensors: resident only once read), 2 threads:

    python docs/bench/resident_after_load.py COMPILED_DIR
"""
import re
import sys

import torch

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
print("MiB resident   before load  after load  growth")
for key in ("rss", "anonymous", "file"):
    print(f"{key:<12} {before[key] / MiB:>12.0f} {after[key] / MiB:>11.0f} {(after[key] - before[key]) / MiB:>7.0f}")
print(f"weights {runner.weight_bytes / MiB:.0f} MiB, reordered for the GEMM template {runner.packed_weight_bytes / MiB:.0f} MiB, "
      f"KV cache {runner.kv_cache.nbytes / MiB:.0f} MiB")
