"""Resident memory after loading a compiled directory, measured in a fresh interpreter so nothing else the
benchmark holds (other models, peers) is counted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_PROBE = r"""
import json, sys, psutil
process = psutil.Process()
import torch
torch.set_num_threads(int(sys.argv[2]))
from bucketserve import AutoModelForCausalLM
before = process.memory_info().rss
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
after = process.memory_info().rss
runner = model.runner
print(json.dumps({"rss_before_load_bytes": before, "rss_after_load_bytes": after,
                  "weight_bytes": runner.weight_bytes, "kv_cache_bytes": runner.kv_cache.nbytes,
                  "packed_weight_bytes": runner.packed_weight_bytes}))
"""


def resident_after_load(directory: Path, threads: int) -> dict:
    """RSS of a process that imported torch and bucketserve and then loaded `directory`, against the
    bytes it must hold: weights once plus the whole KV cache. The weights the decoders' GEMM template reads
    in its own layout (compiler/packed_weights.py) are a second copy, counted in the RSS, not in what is needed."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(directory), str(threads)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    needed = result["weight_bytes"] + result["kv_cache_bytes"]
    result["needed_bytes"] = needed
    result["ratio"] = result["rss_after_load_bytes"] / needed
    result["ratio_without_interpreter"] = (result["rss_after_load_bytes"] - result["rss_before_load_bytes"]) / needed
    return result
