"""One run of the benchmark, for the model source the options name: a random model of a built-in shape
(random_bench.py: decoder sets, HF and llama.cpp peers, arrivals, tensor parallelism) or a GGUF file
(gguf_bench.py: served and engine to engine against llama.cpp, accuracy). Both share the compile cache
(compiled.py, systems.py), the reports (report.py, plots.py) and the targets (targets.py)."""
from __future__ import annotations

import time

from bucketserve.compiler.source_digest import source_digest

from . import report, systems
from .options import BUCKETS, BenchOptions

RESULTS_FILE = "bench.json"


def run(options: BenchOptions) -> dict:
    if options.real or options.accuracy:
        from .gguf_bench import run_gguf

        return run_gguf(options)
    from .random_bench import RandomBench

    started = time.perf_counter()
    results = RandomBench(options).run()
    report.finish_run(results, time.perf_counter() - started, options.out_dir / RESULTS_FILE, report.format_table(results))
    return results


def run_soak_bench(options: BenchOptions, requests: int, seconds: float) -> dict:
    """`bucketserve bench --soak`: soak.json in the out dir; exits non-zero when a block leaked or the server
    stopped answering."""
    from .soak import run_soak

    if requests < 1:
        raise ValueError(f"--soak-requests must be >= 1, got {requests}")
    directory = systems.random_compiled_dir(options, BUCKETS, source_digest())
    result = run_soak(directory, requests, time_limit_s=seconds, seed=options.seed)
    result["command"] = report.command_line()
    report.write_json(result, options.out_dir / "soak.json")
    print(f"soak: {requests} requests in {result['seconds']:.1f} s: {result['outcomes']}; prefix cache hits "
          f"{result['prefix_cache_hits']} of {result['prefix_cache_queries']} tokens; held KV blocks afterwards: "
          f"{result['held_blocks_after']}; still answers: {result['still_answers']}")
    if not (result["no_block_leaked"] and result["still_answers"]):
        raise SystemExit("soak failed: " + ("KV blocks leaked" if not result["no_block_leaked"] else "the server stopped answering"))
    return result
