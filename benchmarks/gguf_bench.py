"""`bucketserve bench --real` / `--accuracy`: a GGUF model file (SmolLM2-135M-Instruct's by default) compiled in
fp32, int8 (from its Q8_0 requantization) and int4 (from its Q4_0), served and run offline against llama.cpp's own
binaries on the same Q8_0 and Q4_0 files (serving.py), and its perplexity and greedy agreement with fp32 measured.
--real writes bench.json, --accuracy accuracy.json.

    bucketserve bench --real --accuracy          # both (compiles are cached under --cache-dir)
    bucketserve bench --real --quick             # a tiny random model written as GGUF: checks the pipeline
"""
from __future__ import annotations

import gc
import time
import traceback

from bucketserve.compiler.source_digest import source_digest

from . import accuracy, memory, plots, prefix_scenarios, report, roofline, scenarios, serving, systems, targets
from .chat_scenarios import Ours, batch_one, chat_prompt_ids, concurrent, seed_group_prompts, seed_groups, warm_up
from .options import BenchOptions
from .systems import FILE_TYPE, source_file
from .workload import load_tokenizer

RESULTS_FILE, ACCURACY_FILE = "bench.json", "accuracy.json"
QUICK_TEXT_WINDOWS = 8  # --quick scores this many windows of the text
LLAMA_CPP_PYTHON_MISSING = "llama-cpp-python is not installed ({}); pip install -c constraints.txt -e '.[bench]' (it builds llama.cpp)"


def run_gguf(options: BenchOptions) -> dict:
    """Runs what the options ask for; returns {"real": speed results, "accuracy": accuracy results} (those that ran)."""
    bench, returned = GgufBench(options), {}
    if options.real:
        started = time.perf_counter()
        results = bench.speed()
        report.finish_run(results, time.perf_counter() - started, options.out_dir / RESULTS_FILE, report.format_speed(results))
        returned["real"] = results
    if options.accuracy:
        started = time.perf_counter()
        results = bench.accuracy()
        report.finish_run(results, time.perf_counter() - started, options.out_dir / ACCURACY_FILE,
                          report.format_accuracy(results))
        returned["accuracy"] = results
    return returned


class GgufBench:
    def __init__(self, options: BenchOptions):
        self.options = options
        self.model_file = systems.model_file(options)
        self.code_digest = source_digest()  # once: every directory of a run is compiled from the same code
        self.systems = systems.gguf_systems(options)

    def log(self, message: str, results: dict | None = None) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
        if results is not None:
            report.write_json(results, self.options.out_dir / report.PARTIAL_FILE)

    def _header(self, mode: str) -> dict:
        return {"mode": mode, "command": report.command_line(), "options": self.options.to_dict(),
                "machine": roofline.machine_info(), "model": {"file": str(self.model_file), "bytes": self.model_file.stat().st_size},
                "systems": {}, "skipped": {}}

    def _compile(self, roles, results: dict) -> dict:
        """{role: (system, compiled directory)} for each role that compiles here; the others skipped with the reason."""
        directories = {}
        for role in roles:
            system = self.systems.get(role)
            if system is None:
                results["skipped"][role] = "left out by --skip"
                continue
            try:
                source = systems.system_source(self.options, self.model_file, system)
                directories[role] = (system, systems.gguf_compiled_dir(self.options, system, source, self.code_digest))
            except Exception as err:  # e.g. a quantization this checkout does not have yet
                if role == "fp32":
                    raise
                if not isinstance(err, ValueError):
                    traceback.print_exc()
                results["skipped"][system.name] = f"{type(err).__name__}: {err}"
                print(f"skipping {system.name}: {results['skipped'][system.name]}", flush=True)
        return directories

    # --real -------------------------------------------------------------------------------------------------
    def speed(self) -> dict:
        options, results = self.options, self._header("real")
        results.update(step_latency={}, batch_1={}, concurrent_8={}, seed_groups={}, served={}, offline={},
                       engine={}, plots=[])
        self.log("measuring memory read bandwidth")
        results["memory_bandwidth"] = roofline.read_bandwidth()
        bandwidth = results["memory_bandwidth"]["bytes_per_second"]
        directories = self._compile(("fp32", "int8", "int4", "int4 single"), results)
        results["model"]["files"] = {q: str(source_file(options, self.model_file, q)) for q in FILE_TYPE}
        if "in-process" in options.skip_systems:
            results["skipped"]["in-process"] = "left out by --skip in-process"
            self._versus_llama_cpp(results, {role: directory for role, (_, directory) in directories.items()})
            results["targets"] = targets.judge_real(results)
            results["plots"] = self._plots(results)
            return results
        tokenizer = load_tokenizer(next(iter(directories.values()))[1])
        ours = {}
        for role, (system, directory) in directories.items():
            self.log(f"loading {system.name}", results)
            loaded = systems.load_compiled(system.name, directory)
            results["systems"][system.name] = self._system_info(system, loaded, memory.resident_after_load(directory, options.threads))
            ours[role] = Ours(system.name, loaded.model, tokenizer)
        for contestant in ours.values():
            self.log(f"step latency: {contestant.name}", results)
            results["step_latency"][contestant.name] = scenarios.step_latency(contestant.model, options, bandwidth)
        # batch 1 and 8 concurrent: every bucketed system, in-process; the seed's groups: int4 buckets vs its largest alone.
        bucketed = {c.name: c for role, c in ours.items() if role != "int4 single"}
        prompt_groups = seed_group_prompts(tokenizer)
        self.log("warm-up", results)
        warm_up({c.name: c for c in ours.values()}, prompt_groups["1"][0])
        self.log(f"batch 1: {', '.join(bucketed)} interleaved", results)
        results["batch_1"] = batch_one(bucketed, prompt_groups["1"][0], options)
        self.log(f"8 concurrent requests: {', '.join(bucketed)} interleaved", results)
        results["concurrent_8"] = concurrent(bucketed, prompt_groups["8"], options)
        if "int4" in ours and "int4 single" in ours:
            self.log("the seed's groups under int4: every decoder vs the largest alone, interleaved", results)
            results["seed_groups"] = seed_groups({ours[r].name: ours[r] for r in ("int4", "int4 single")}, prompt_groups, options)
        # T11 and T12 on the real model's graphs, as `bucketserve bench` runs them on random weights.
        reference = ours.get("fp32") or next(iter(ours.values()))
        results["prefix_cache"] = prefix_scenarios.run_both(reference.model, tokenizer, self.log)
        for scenario in ("batch_1", "concurrent_8", "seed_groups"):
            for run in results[scenario].values():
                run.pop("token_ids", None)
        loaded_dirs = {role: ours[role].model.directory for role in ours}
        for contestant in ours.values():  # the served and offline runs load their own copies
            contestant.close()
        del ours
        gc.collect()
        self._versus_llama_cpp(results, loaded_dirs)
        results["targets"] = targets.judge_real(results)
        results["plots"] = self._plots(results)
        return results

    def _versus_llama_cpp(self, results: dict, directories: dict) -> None:
        """For int4 and int8: served (bucketserve serve vs llama-server), offline (LLM.chat on the same
        conversations) and engine to engine (LLM.generate vs llama-bench and llama-batched-bench)."""
        from bucketserve.entrypoints.llm import LLM

        options = self.options
        results["engine_shapes"] = {k: list(v) if isinstance(v, tuple) else v for k, v in serving.engine_shapes(options).items()}
        conversations = [[{"role": "user", "content": q}] for q in accuracy.chat_questions()]
        if "llama.cpp" not in options.peers:
            results["skipped"]["llama.cpp"] = "left out by --skip llama.cpp"
        for quantization, file_type in FILE_TYPE.items():
            if quantization not in directories:
                continue
            directory, gguf_file = directories[quantization], source_file(options, self.model_file, quantization)
            peer_file = gguf_file if "llama.cpp" in options.peers else None
            self.log(f"{quantization}: served, bucketserve serve vs llama-server ({file_type})", results)
            results["served"][quantization] = serving.served(directory, peer_file, conversations, options, self.log,
                                                             options.out_dir)
            llm = LLM(model=str(directory))
            self.log(f"{quantization}: offline, LLM.chat on the served conversations", results)
            results["offline"][quantization] = serving.offline(llm, conversations, options)
            self.log(f"{quantization}: engine to engine, LLM.generate vs llama-bench and llama-batched-bench", results)
            engine = {"bucketserve LLM.generate": serving.offline_engine(llm, options)}
            del llm
            gc.collect()
            if peer_file is not None:
                engine.update(serving.llama_cpp_engine(peer_file, options))
            results["engine"][quantization] = engine

    def _system_info(self, system, loaded: systems.CompiledSystem, memory_info: dict) -> dict:
        runner = loaded.model.runner
        return {"directory": str(loaded.directory), "quantization": system.quantization,
                "source_file": str(systems.system_source(self.options, self.model_file, system)),
                "decoder_batch_sizes": list(system.decoder_batch_sizes), "compile_seconds": loaded.compile_seconds,
                "compile_seconds_total": sum(loaded.compile_seconds.values()), "load_seconds": loaded.load_seconds,
                "weight_bytes": runner.weight_bytes, "kv_cache_bytes": runner.kv_cache.nbytes, "memory": memory_info}

    def _plots(self, results: dict) -> list[str]:
        missing = plots.matplotlib_missing()
        if missing:
            print(f"plots skipped: {missing}", flush=True)
            results["skipped"]["plots"] = missing
            return []
        return [str(p) for p in plots.write_gguf_plots(results, self.options.out_dir)]

    # --accuracy ---------------------------------------------------------------------------------------------
    def accuracy(self) -> dict:
        from bucketserve.entrypoints.llm import LLM

        options, results = self.options, self._header("accuracy")
        if "fp32" not in self.systems:
            raise ValueError("--accuracy compares every system with fp32; leave fp32 out of --skip")
        directories = self._compile(("fp32", "int8", "int4", "int4 model file"), results)
        text = accuracy.load_text()
        tokenizer = load_tokenizer(directories["fp32"][1])
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
        for system, directory in directories.values():
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
                results["skipped"]["llama.cpp"] = LLAMA_CPP_PYTHON_MISSING.format(err)
                break
        return perplexities

