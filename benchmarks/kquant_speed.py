"""Batch-1 decode speed of SmolLM2's K-quant copies as bucketserve runs them (kept exactly), beside our Q4_0 copy
and llama.cpp's llama-bench on the same files.

The files are made once into the cache, never by hand: an F32 GGUF of the model (checkpoints.gguf_writer's
requantize_gguf, through the file's own values), then llama.cpp's own llama-quantize -> Q4_K_M / Q5_K_M / Q6_K;
the Q4_0 copy is requantize_gguf's (the benchmark's int4 file). Each file is compiled with batch_size 1 and
one decoder; tokens/s is decode only: (time of `new_tokens` + 1 greedy tokens - time of 1) / new_tokens, the
best of --repeats rounds, every file once per round. llama-bench runs `-p 0 -n new_tokens` at the same thread
count. Targets (issue 35): Q4_K_M >= 0.9x our Q4_0 copy, and >= 1.3x llama.cpp's on the Q4_K_M file.

    python -m benchmarks.kquant_speed --compiler eager          # minutes: the same model code, uncompiled
    python -m benchmarks.kquant_speed --compiler aoti           # AOTInductor graphs (minutes per graph here)
    python -m benchmarks.kquant_speed --perplexity 4096         # also perplexity on the first 4096 tokens of the
                                                                # bench's text, ours and llama-perplexity's, F32 too

Perplexity: ours is benchmarks.accuracy.perplexity (non-overlapping windows of 256, every token after a
window's first scored); llama-perplexity scores the second half of each window of -c 256 by its own rule, so
compare each engine's files with its own F32 row, not one engine's figure with the other's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN", "/work/llama/build/bin"))
K_TYPES = ("Q4_K_M", "Q5_K_M", "Q6_K")
PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1789, 28, 1070, 441, 1132, 314, 1116, 30, 378]  # 16 tokens


def model_files(cache: Path, k_types: tuple[str, ...]) -> dict[str, Path]:
    """{"Q4_0": our copy, "Q4_K_M": llama-quantize's, ...}, each made once into cache."""
    from bucketserve.checkpoints.gguf_writer import requantize_gguf
    from bucketserve.demo.smollm2 import INSTALL, smollm2_gguf

    source = smollm2_gguf()
    if source is None:
        raise SystemExit(f"the real model is not installed: {INSTALL}")
    cache.mkdir(parents=True, exist_ok=True)
    files = {}
    for weight_type in ("F32", "Q4_0"):
        path = cache / f"{source.stem}.{weight_type}.gguf"
        if not path.is_file():
            print(f"writing {path.name} ...", flush=True)
            requantize_gguf(source, path.with_suffix(".partial"), weight_type)
            path.with_suffix(".partial").rename(path)
        files[weight_type] = path
    for k_type in k_types:
        path = cache / f"{source.stem}.{k_type}.gguf"
        if not path.is_file():
            print(f"llama-quantize {files['F32'].name} -> {k_type} ...", flush=True)
            subprocess.run([str(LLAMA_BIN / "llama-quantize"), str(files["F32"]), str(path.with_suffix(".partial")),
                            k_type], check=True, capture_output=True)
            path.with_suffix(".partial").rename(path)
        files[k_type] = path
    return files


def tensor_types(path: Path) -> dict[str, int]:
    import gguf

    return dict(Counter(t.tensor_type.name for t in gguf.GGUFReader(path).tensors if len(t.shape) == 2))


def compile_file(path: Path, compiler: str, out: Path):
    from bucketserve import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, export=True, compiler=compiler, batch_size=1, max_seq_len=256,
                                                 prefill_chunk_size=32)
    seconds = time.perf_counter() - started
    if compiler == "aoti":  # run what a user loads: the saved directory
        model.save_pretrained(out)
        del model
        model = AutoModelForCausalLM.from_pretrained(out)
    return model, seconds


def decode_seconds(model, new_tokens: int) -> float:
    prompt = torch.tensor([PROMPT])

    def generate(tokens: int) -> float:
        started = time.perf_counter()
        model.generate(prompt, max_new_tokens=tokens, eos_token_id=[])
        return time.perf_counter() - started

    generate(2)  # warm
    return generate(new_tokens + 1) - generate(1)


def our_perplexity(model, out: Path, tokens: int) -> float:
    from benchmarks.accuracy import load_text, perplexity
    from bucketserve import LLM

    model.save_pretrained(out)
    with LLM(model=str(out), device="cpu") as llm:
        token_ids = llm.get_tokenizer().encode(load_text(), add_special_tokens=False)[:tokens]
        return perplexity(llm, token_ids, 256)["perplexity"]


def llama_perplexity(path: Path, tokens: int, threads: int, text_file: Path) -> float:
    out = subprocess.run([str(LLAMA_BIN / "llama-perplexity"), "-m", str(path), "-f", str(text_file), "-c", "256",
                          "--chunks", str(tokens // 256), "-t", str(threads)], check=True, capture_output=True, text=True)
    line = next(line for line in (out.stdout + out.stderr).splitlines() if "Final estimate: PPL" in line)
    return float(line.split("=")[1].split()[0])


def llama_bench(path: Path, new_tokens: int, threads: int, repeats: int) -> float:
    out = subprocess.run([str(LLAMA_BIN / "llama-bench"), "-m", str(path), "-p", "0", "-n", str(new_tokens),
                          "-t", str(threads), "-r", str(repeats), "-o", "json"], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout)[0]["avg_ts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compiler", choices=("eager", "aoti"), default="eager")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--k-types", nargs="*", default=list(K_TYPES))
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip llama-bench")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/bucketserve/bench/kquant").expanduser())
    parser.add_argument("--perplexity", type=int, default=0, metavar="TOKENS", help="also perplexity on this many tokens")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    from bucketserve.kernels import library

    torch.set_num_threads(args.threads)
    library.build()  # eager compiles call the kernels too, where this process has them
    files = model_files(args.cache, tuple(args.k_types))
    f32 = files.pop("F32")
    results = {"compiler": args.compiler, "threads": args.threads, "new_tokens": args.new_tokens, "files": {}}
    work = Path(tempfile.mkdtemp(prefix="kquant-speed-"))
    try:
        models = {}
        for name, path in files.items():
            models[name], seconds = compile_file(path, args.compiler, work / name)
            quantized = models[name].manifest.get("quantized_tensors") or {}
            results["files"][name] = {"file": path.name, "bytes": path.stat().st_size, "types": tensor_types(path),
                                      "kept": dict(Counter(entry["from"] for entry in quantized.values() if entry["kept"])),
                                      "compile_s": round(seconds, 1), "tokens_per_s": []}
            print(f"{name}: compiled in {seconds:.0f} s, types {results['files'][name]['types']}", flush=True)
        for _ in range(args.repeats):  # interleaved rounds: every file once per round
            for name, model in models.items():
                results["files"][name]["tokens_per_s"].append(args.new_tokens / decode_seconds(model, args.new_tokens))
                print(f"{name}: {results['files'][name]['tokens_per_s'][-1]:.2f} tok/s", flush=True)
        for name in files:
            entry = results["files"][name]
            entry["best_tokens_per_s"] = round(max(entry["tokens_per_s"]), 2)
            if not args.no_llama_cpp:
                entry["llama_bench_tokens_per_s"] = round(llama_bench(files[name], args.new_tokens, args.threads,
                                                                      args.repeats), 2)
        if args.perplexity:
            from benchmarks.accuracy import load_text

            text_file = work / "text.txt"
            text_file.write_text(load_text())
            models["F32"], _ = compile_file(f32, "eager", work / "F32")
            results["files"]["F32"] = {"file": f32.name}
            for name, model in models.items():
                results["files"][name]["perplexity"] = round(our_perplexity(model, work / f"{name}-ppl", args.perplexity), 4)
                if not args.no_llama_cpp:
                    path = f32 if name == "F32" else files[name]
                    results["files"][name]["llama_perplexity"] = round(
                        llama_perplexity(path, args.perplexity, args.threads, text_file), 4)
                print(name, {k: v for k, v in results["files"][name].items() if "perplexity" in k}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    q4_0 = results["files"]["Q4_0"]["best_tokens_per_s"]
    for name, entry in results["files"].items():
        if "best_tokens_per_s" not in entry:
            continue
        line = f"{name:7s} {entry['best_tokens_per_s']:7.2f} tok/s  {entry['best_tokens_per_s'] / q4_0:.2f}x our Q4_0"
        if "llama_bench_tokens_per_s" in entry:
            line += (f"  llama-bench {entry['llama_bench_tokens_per_s']:7.2f} tok/s  "
                     f"{entry['best_tokens_per_s'] / entry['llama_bench_tokens_per_s']:.2f}x llama.cpp")
        print(line)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
