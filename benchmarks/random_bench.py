"""The random-model run (`bucketserve bench`): a random checkpoint of a built-in shape compiled with decoders
[8, 4, 1] and [8], every scenario for every system in one process run (step latency against the memory floor,
the seed's groups, arrivals, prefix caching, tensor parallelism, a step's profile) and the peers on the same
weights and prompts (the eager engine, HF transformers, llama.cpp's llama-batched-bench on the weights as F32
GGUF); targets T1-T6, T11, T12.
"""
from __future__ import annotations

import gc
import time
import traceback

import torch

from bucketserve.compiler.source_digest import source_digest

from . import (
    arrivals,
    baselines,
    compiled,
    llama_cpp,
    memory,
    plots,
    prefix_scenarios,
    profile,
    report,
    roofline,
    scenarios,
    systems,
    targets,
)
from .options import BUCKETS, GROUP_SIZES, SINGLE, BenchOptions
from .workload import load_tokenizer


class RandomBench:
    """One run: loads each system in turn, runs its scenarios, and collects every figure in `results`."""

    def __init__(self, options: BenchOptions):
        self.options = options
        self.results: dict = {
            "command": report.command_line(),
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
        checkpoint = systems.checkpoint_dir(options)
        source = source_digest()  # once per run: edits made meanwhile cannot mix model code between decoder sets
        results["model_source_digest"] = source
        # Compile now (or find them cached), before anything is loaded.
        directories = {sizes: systems.random_compiled_dir(options, sizes, source) for sizes in (BUCKETS, SINGLE)}
        tensor_parallel_dirs = self._compile_tensor_parallel(source)
        tokenizer = load_tokenizer(checkpoint)
        vocab = len(tokenizer)
        loaded = {}
        for sizes in (BUCKETS, SINGLE):
            self.log(f"loading decoders {list(sizes)}")
            system = systems.load_compiled(systems.system_name(sizes), directories[sizes])
            results["systems"][system.name] = self._system_info(system, memory.resident_after_load(system.directory, options.threads))
            loaded[system.name] = system.model
        if "eager" in options.peers:
            self.log("building the eager engine")
            system = systems.load_eager(options, BUCKETS)
            results["systems"]["eager"] = self._system_info(system, {})
            loaded["eager"] = system.model
        for name, model in loaded.items():
            self.log(f"step latency: {name}")
            results["step_latency"][name] = scenarios.step_latency(model, options, bandwidth)
        for name, model in loaded.items():
            self.log(f"seed groups: {name}")
            results["groups"][name] = scenarios.groups(model, tokenizer, options)
        self._prefix_cache(loaded[systems.system_name(BUCKETS)], tokenizer)
        self._peers(checkpoint, vocab)
        self._arrivals(loaded, tokenizer)
        self.log("profiling one decode step")
        results["profile"] = profile.profile_decode_step(loaded, tokenizer, options)
        # Last: a tensor-parallel model makes this process rank 0 (one process group per process, its threads
        # split among the ranks), which nothing after it must see.
        self._tensor_parallel(loaded[systems.system_name(BUCKETS)], tensor_parallel_dirs, bandwidth)
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

    def _system_info(self, system: systems.CompiledSystem, memory_info: dict) -> dict:
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
            self._peer("llama.cpp", _llama_cpp, options)

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
                directories[size] = systems.random_compiled_dir(self.options, BUCKETS, source, tensor_parallel_size=size)
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
            system = systems.load_compiled(f"{systems.system_name(BUCKETS)} TP={size}", directory)
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
        single = systems.system_name(SINGLE)
        # One service time: new_tokens steps at the [8] decoder's pace in the group of 8.
        per_token = results["groups"][single]["8"]["seconds"] / options.new_tokens
        service = options.new_tokens * per_token
        offsets = arrivals.arrival_offsets(options.arrival_requests, service, options.seed)
        results["arrivals"]["schedule"] = {"requests": len(offsets), "service_seconds": service, "offsets": offsets}
        for sizes in (BUCKETS, SINGLE):
            name = systems.system_name(sizes)
            self.log(f"arrivals: {name}")
            results["arrivals"][name] = arrivals.run_arrivals(loaded[name], tokenizer, options, offsets)


def _step_times(step_latency: dict) -> dict:
    """A step-latency result without its floor: on a tensor-parallel model that would count rank 0's weight
    shard with every rank's KV heads, neither one rank's bytes nor the step's, so no size keeps it."""
    timing = ("batch", "context_len", "median_seconds", "min_seconds", "repeats")
    return {batch: {k: step[k] for k in timing} for batch, step in step_latency.items()}


def _llama_cpp(options: BenchOptions) -> dict:
    """llama.cpp's own engine on the same weights written as F32 GGUF: llama-batched-bench with B = each group's size,
    the groups' prompt length and new tokens; a group's tokens/s is B x new tokens over its whole time (prefill in,
    as ours). With --dtype bfloat16 llama.cpp still reads fp32 weights."""
    path = compiled.random_gguf(options.cache_dir, options.shape, options.seed, "F32")
    try:
        figures = llama_cpp.batched_bench(options.llama_bin, path, options.threads, GROUP_SIZES, options.prompt_len,
                                          options.new_tokens)
    except (llama_cpp.LlamaCppMissing, llama_cpp.LlamaCppFailed) as err:
        return {"skipped": str(err)}
    results = {"command": figures["command"]}
    for size in GROUP_SIZES:
        run = figures[f"B={size}"]
        tokens = size * run["gen_tokens"]
        results[str(size)] = {"requests": size, "seconds": run["seconds"], "output_tokens": tokens,
                              "output_tokens_per_second": tokens / run["seconds"], "batch": size}
    return results


def greedy_agreement(groups: dict) -> dict:
    """How far each system's greedy tokens agree with [8, 4, 1]'s on the same prompts."""
    reference = groups.get(systems.system_name(BUCKETS))
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
