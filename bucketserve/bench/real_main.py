"""`bucketserve bench --real` / `--accuracy`: SmolLM2-135M-Instruct's GGUF file compiled in fp32, int8 (from its
Q8_0 requantization) and int4 (from its Q4_0), timed against llama.cpp on the same Q8_0 and Q4_0 files, and its
perplexity and greedy agreement with fp32 measured. --real writes bench.json, --accuracy accuracy.json.

    bucketserve bench --real --accuracy          # both (compiles are cached under --cache-dir)
    bucketserve bench --real --quick             # a tiny random model written as GGUF: checks the pipeline
"""
from __future__ import annotations

import gc
import time
import traceback

from ..compiler.source_digest import source_digest
from . import (
    accuracy,
    artifacts,
    memory,
    prefix_scenarios,
    real_artifacts,
    real_plots,
    real_report,
    report,
    roofline,
    scenarios,
    targets,
)
from .contestants import LlamaCpp, Ours
from .main import _command_line
from .options import BenchOptions
from .real_artifacts import ACCURACY_SYSTEMS, FILE_TYPE, FP32, INT4, INT4_SINGLE, INT8, SYSTEMS, source_file
from .real_scenarios import batch_one, chat_prompt_ids, concurrent, seed_group_prompts, seed_groups, warm_up
from .workload import load_tokenizer

RESULTS_FILE, ACCURACY_FILE = "bench.json", "accuracy.json"
QUICK_TEXT_WINDOWS = 8  # --quick scores this many windows of the text
LLAMA_CPP_MISSING = "llama-cpp-python is not installed ({}); pip install -c constraints.txt -e '.[bench]' (it builds llama.cpp)"


def run_real(options: BenchOptions) -> dict:
    """Runs what the options ask for; returns {"real": speed results, "accuracy": accuracy results} (those that ran)."""
    bench, returned = RealBench(options), {}
    if options.real:
        started = time.perf_counter()
        results = bench.speed()
        report.finish_run(results, time.perf_counter() - started, options.out_dir / RESULTS_FILE, real_report.format_speed(results))
        returned["real"] = results
    if options.accuracy:
        started = time.perf_counter()
        results = bench.accuracy()
        report.finish_run(results, time.perf_counter() - started, options.out_dir / ACCURACY_FILE,
                          real_report.format_accuracy(results))
        returned["accuracy"] = results
    return returned


class RealBench:
    def __init__(self, options: BenchOptions):
        self.options = options
        self.model_file = real_artifacts.model_file(options)
        self.code_digest = source_digest()  # once: every directory of a run is compiled from the same code

    def log(self, message: str, results: dict | None = None) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
        if results is not None:
            report.write_json(results, self.options.out_dir / report.PARTIAL_FILE)

    def _header(self, mode: str) -> dict:
        return {"mode": mode, "command": _command_line(), "options": self.options.to_dict(),
                "machine": roofline.machine_info(), "model": {"file": str(self.model_file), "bytes": self.model_file.stat().st_size},
                "systems": {}, "skipped": {}}

    def _compile(self, systems, results: dict) -> dict:
        """{system: compiled directory} for each system that compiles here; the others skipped with the reason."""
        directories = {}
        for system in systems:
            try:
                source = real_artifacts.system_source(self.options, self.model_file, system)
                directories[system] = real_artifacts.compiled_dir(self.options, system, source, self.code_digest)
            except Exception as err:  # e.g. a quantization this checkout does not have yet
                if system is FP32:
                    raise
                if not isinstance(err, ValueError):
                    traceback.print_exc()
                results["skipped"][system.name] = f"{type(err).__name__}: {err}"
                print(f"skipping {system.name}: {results['skipped'][system.name]}", flush=True)
        return directories

    # --real -------------------------------------------------------------------------------------------------
    def speed(self) -> dict:
        options, results = self.options, self._header("real")
        results.update(step_latency={}, batch_1={}, concurrent_8={}, seed_groups={}, greedy_agreement={}, plots=[])
        self.log("measuring memory read bandwidth")
        results["memory_bandwidth"] = roofline.read_bandwidth()
        bandwidth = results["memory_bandwidth"]["bytes_per_second"]
        directories = self._compile(SYSTEMS, results)
        results["model"]["files"] = {q: str(source_file(options, self.model_file, q)) for q in FILE_TYPE}
        tokenizer = load_tokenizer(directories[FP32])
        ours = {}
        for system, directory in directories.items():
            self.log(f"loading {system.name}", results)
            loaded = artifacts.load_compiled(system.name, directory)
            results["systems"][system.name] = self._system_info(system, loaded, memory.resident_after_load(directory, options.threads))
            ours[system] = Ours(system.name, loaded.model, tokenizer)
        peers = self._llama_cpp_peers(results, [s.quantization for s in (INT8, INT4)])
        for system, contestant in ours.items():
            self.log(f"step latency: {system.name}", results)
            results["step_latency"][system.name] = scenarios.step_latency(contestant.model, options, bandwidth)
        # batch 1 and 8 concurrent: every [8, 4, 1] system and every peer; the seed's groups: int4 [8, 4, 1] vs [8].
        bucketed = {s.name: c for s, c in ours.items() if s is not INT4_SINGLE}
        contestants = {**bucketed, **{p.name: p for p in peers.values()}}
        prompt_groups = seed_group_prompts(tokenizer)
        self.log("warm-up", results)
        warm_up({**contestants, **{s.name: c for s, c in ours.items()}}, prompt_groups["1"][0])
        self.log(f"batch 1: {', '.join(contestants)} interleaved", results)
        results["batch_1"] = batch_one(contestants, prompt_groups["1"][0], options)
        self.log(f"8 concurrent requests: {', '.join(contestants)} interleaved", results)
        results["concurrent_8"] = concurrent(contestants, prompt_groups["8"], options)
        if INT4 in ours and INT4_SINGLE in ours:
            self.log("the seed's groups under int4: [8, 4, 1] vs [8] interleaved", results)
            results["seed_groups"] = seed_groups({s.name: ours[s] for s in (INT4, INT4_SINGLE)}, prompt_groups, options)
        # T11 and T12 on the real model: its fp32 [8, 4, 1] graphs, as `bucketserve bench` runs them on random weights.
        results["prefix_cache"] = prefix_scenarios.run_both(ours[FP32].model, tokenizer, self.log)
        results["greedy_agreement"] = peer_agreement(results)
        for scenario in ("batch_1", "concurrent_8", "seed_groups"):
            for run in results[scenario].values():
                run.pop("token_ids", None)
        for peer in peers.values():
            peer.close()
        results["targets"] = targets.judge_real(results)
        results["plots"] = self._plots(results)
        return results

    def _system_info(self, system, loaded: artifacts.CompiledSystem, memory_info: dict) -> dict:
        runner = loaded.model.runner
        return {"directory": str(loaded.directory), "quantization": system.quantization,
                "source_file": str(real_artifacts.system_source(self.options, self.model_file, system)),
                "decoder_batch_sizes": list(system.decoder_batch_sizes), "compile_seconds": loaded.compile_seconds,
                "compile_seconds_total": sum(loaded.compile_seconds.values()), "load_seconds": loaded.load_seconds,
                "weight_bytes": runner.weight_bytes, "kv_cache_bytes": runner.kv_cache.nbytes, "memory": memory_info}

    def _llama_cpp_peers(self, results: dict, quantizations) -> dict:
        """{quantization: LlamaCpp} on the same file as bucketserve's system of that quantization."""
        options, peers = self.options, {}
        if "llama.cpp" not in options.peers:
            results["skipped"]["llama.cpp"] = "left out by --skip llama.cpp"
            return peers
        for quantization in quantizations:
            name, path = real_artifacts.llama_cpp_name(quantization), source_file(options, self.model_file, quantization)
            self.log(f"loading {name} ({path.name})")
            try:
                peers[quantization] = LlamaCpp(name, path, options.max_seq_len, options.prefill_chunk_size,
                                               options.threads, options.seed)
            except ImportError as err:
                results["skipped"]["llama.cpp"] = LLAMA_CPP_MISSING.format(err)
                print(f"skipping llama.cpp: {results['skipped']['llama.cpp']}", flush=True)
                break
            except Exception as err:  # a file llama.cpp cannot load is this peer's problem, not the run's
                traceback.print_exc()
                results["skipped"][name] = f"{type(err).__name__}: {err}"
        return peers

    def _plots(self, results: dict) -> list[str]:
        missing = real_plots.matplotlib_missing()
        if missing:
            print(f"plots skipped: {missing}", flush=True)
            results["skipped"]["plots"] = missing
            return []
        return [str(p) for p in real_plots.write_plots(results, self.options.out_dir)]

    # --accuracy ---------------------------------------------------------------------------------------------
    def accuracy(self) -> dict:
        from ..entrypoints.llm import LLM

        options, results = self.options, self._header("accuracy")
        directories = self._compile(ACCURACY_SYSTEMS, results)
        text = accuracy.load_text()
        tokenizer = load_tokenizer(directories[FP32])
        text_ids = tokenizer(text)["input_ids"]
        questions = accuracy.chat_questions()
        prompts = [chat_prompt_ids(tokenizer, q) for q in questions]
        window = options.max_seq_len - 1  # a window and the one token generated after it fill the context
        text_tokens = len(text_ids)
        if options.quick:  # a tiny vocabulary cuts the text into many short windows: a few check the pipeline
            text_ids = text_ids[:QUICK_TEXT_WINDOWS * window]
        results.update(text={"file": accuracy.TEXT_FILE, "characters": len(text), "text_tokens": text_tokens,
                             "tokens": len(text_ids), "window_tokens": window},
                       questions=questions, perplexity={}, answers={})
        for system, directory in directories.items():
            self.log(f"perplexity and greedy answers: {system.name}")
            llm = LLM(model=str(directory))
            started = time.perf_counter()
            results["perplexity"][system.key] = accuracy.perplexity(llm, text_ids, window)
            results["perplexity"][system.key]["seconds"] = time.perf_counter() - started
            results["answers"][system.key] = accuracy.greedy_answers(llm, prompts, options.new_tokens)
            del llm
            gc.collect()
        results["llama_cpp_perplexity"] = self._llama_cpp_perplexity(results, text_ids, window)
        results["greedy_agreement"] = {name: accuracy.agreement(results["answers"]["fp32"], answers)
                                       for name, answers in results["answers"].items() if name != "fp32"}
        results["targets"] = targets.judge_accuracy(results)
        return results


    def _llama_cpp_perplexity(self, results: dict, text_ids: list[int], window: int) -> dict:
        """llama.cpp's perplexity on each system's own file (the model file for fp32), as a reference."""
        if "llama.cpp" not in self.options.peers:
            results["skipped"]["llama.cpp"] = "left out by --skip llama.cpp"
            return {}
        perplexities = {}
        for quantization in (None, *FILE_TYPE):
            path = source_file(self.options, self.model_file, quantization)
            self.log(f"llama.cpp perplexity: {path.name}")
            try:
                perplexities[quantization or "fp32"] = {"file": path.name, **accuracy.llama_cpp_perplexity(
                    path, text_ids, window, self.options.threads)}
            except ImportError as err:
                results["skipped"]["llama.cpp"] = LLAMA_CPP_MISSING.format(err)
                break
        return perplexities


def peer_agreement(results: dict) -> dict:
    """How far bucketserve's greedy tokens agree with llama.cpp's on the same file (they need not be identical:
    llama.cpp multiplies quantized weights by activations it quantizes to 8 bits itself)."""
    agreement = {}
    for quantization in FILE_TYPE:
        ours, peer = f"{quantization} [8, 4, 1]", real_artifacts.llama_cpp_name(quantization)
        for scenario in ("batch_1", "concurrent_8"):
            runs = results[scenario]
            if ours in runs and peer in runs:
                agreement[f"{ours} vs {peer}, {scenario}"] = accuracy.agreement(runs[ours]["token_ids"], runs[peer]["token_ids"])
    return agreement
