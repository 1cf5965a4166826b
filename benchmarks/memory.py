"""Resident memory after loading a compiled directory and running every graph once, measured in a fresh
interpreter so nothing else the benchmark holds (other models, peers) is counted."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent  # the folder holding benchmarks/

_PROBE = r"""
import json, sys, psutil
process = psutil.Process()
import torch
torch.set_num_threads(int(sys.argv[2]))
from bucketserve import AutoModelForCausalLM
from benchmarks.memory import run_every_graph_once
before = process.memory_info().rss
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
after = process.memory_info().rss
runner = model.runner
run_every_graph_once(runner)
steps = process.memory_info().rss
print(json.dumps({"rss_before_load_bytes": before, "rss_after_load_bytes": after, "rss_after_steps_bytes": steps,
                  "weight_bytes": runner.weight_bytes, "kv_cache_bytes": runner.kv_cache.nbytes,
                  "packed_weight_bytes": runner.packed_weight_bytes}))
"""


def run_every_graph_once(runner) -> None:
    """A full prefill chunk, then one step of every decoder at full context: afterwards whatever a graph
    reads is resident, as in serving (the KV cache is resident from the start: it is zeroed at load)."""
    blocks = list(range(1, runner.kv_cache.blocks_per_sequence + 1))
    last = runner.compile_config.max_seq_len - 1
    runner.prefill([1] * runner.compile_config.prefill_chunk_size, blocks)
    for batch in runner.decoder_batch_sizes:
        runner.decode([1] * batch, [last] * batch, [blocks] * batch)


def resident_after_load(directory: Path, threads: int) -> dict:
    """RSS of a process that imported torch and bucketserve, loaded `directory` and ran each of its graphs
    once, against the bytes it must hold: weights once plus the whole KV cache. `ratio` is after the steps
    (what serving holds), `ratio_after_load` before them. Weights reordered for the compiled graphs
    (compiler/packed_weights.py) count in the RSS; their plain copies count where something reads them."""
    # The probe imports this folder as `benchmarks`: the checkout's root goes first on its path.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(CHECKOUT), os.environ.get("PYTHONPATH")))))
    done = subprocess.run([sys.executable, "-c", _PROBE, str(directory), str(threads)],
                          capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    needed = result["weight_bytes"] + result["kv_cache_bytes"]
    result["needed_bytes"] = needed
    result["ratio"] = result["rss_after_steps_bytes"] / needed
    result["ratio_after_load"] = result["rss_after_load_bytes"] / needed
    result["ratio_without_interpreter"] = (result["rss_after_steps_bytes"] - result["rss_before_load_bytes"]) / needed
    return result
