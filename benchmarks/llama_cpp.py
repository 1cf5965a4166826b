"""The one llama.cpp driver: its own binaries (llama-server, llama-bench, llama-batched-bench), found in
--llama-bin DIR or on PATH, run on a GGUF file with the bench's threads. How to build them: docs/PERFORMANCE.md.

Each measurement returns its figures or raises LlamaCppMissing / LlamaCppFailed, whose message the pipeline
records as the peer's reason for being skipped. (The accuracy mode's reference perplexity reads llama.cpp's
logits through llama-cpp-python, the one thing that still needs it: `perplexity_from_logits` below.)
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

SERVER, BENCH, BATCHED_BENCH = "llama-server", "llama-bench", "llama-batched-bench"
BUILD_HINT = "build llama.cpp as docs/PERFORMANCE.md says and pass --llama-bin DIR (or put its bin/ on PATH)"
RUN_TIMEOUT_S = 900  # one llama-bench / llama-batched-bench run; bounded so a hung peer cannot hang the bench


class LlamaCppMissing(RuntimeError):
    """A binary is not in --llama-bin nor on PATH."""


class LlamaCppFailed(RuntimeError):
    """A binary ran and exited non-zero (or printed nothing we can read)."""


def find_binary(name: str, llama_bin: Path | None) -> Path:
    """`name` in llama_bin when given (and only there), else on PATH."""
    if llama_bin is not None:
        path = Path(llama_bin).expanduser() / name
        if path.is_file():
            return path
        raise LlamaCppMissing(f"{name} is not in --llama-bin {llama_bin}; {BUILD_HINT}")
    found = shutil.which(name)
    if found is None:
        raise LlamaCppMissing(f"{name} is not on PATH and no --llama-bin was given; {BUILD_HINT}")
    return Path(found)


def server_command(llama_bin: Path | None, gguf_file: Path, port: int, users: int, threads: int,
                   context_per_user: int) -> list[str]:
    """llama-server as users run it: `users` slots (-np), continuous batching on, our thread count, each slot
    the context our compiled directory has (-c is the total, split among the slots)."""
    return [str(find_binary(SERVER, llama_bin)), "-m", str(gguf_file), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(users), "-c", str(users * context_per_user), "-t", str(threads), "-tb", str(threads),
            "--cont-batching", "--no-webui"]


def _run(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise LlamaCppFailed(f"{' '.join(command)} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout + "\n" + done.stderr


def bench_command(llama_bin: Path | None, gguf_file: Path, threads: int, prompt_tokens: int, gen_tokens: int,
                  repetitions: int) -> list[str]:
    return [str(find_binary(BENCH, llama_bin)), "-m", str(gguf_file), "-t", str(threads), "-p", str(prompt_tokens),
            "-n", str(gen_tokens), "-r", str(repetitions), "-o", "json"]


def llama_bench(llama_bin: Path | None, gguf_file: Path, threads: int, prompt_tokens: int = 512, gen_tokens: int = 128,
                repetitions: int = 3) -> dict:
    """{"pp512": {...}, "tg128": {...}}: llama-bench's prompt processing and generation tokens/s (mean of its
    repetitions, and their standard deviation), with the command."""
    command = bench_command(llama_bin, gguf_file, threads, prompt_tokens, gen_tokens, repetitions)
    out = _run(command)
    start = out.find("[")
    try:
        rows = json.loads(out[start:out.rindex("]") + 1])
    except ValueError as err:
        raise LlamaCppFailed(f"{' '.join(command)} printed no JSON array: {err}") from err
    results = {}
    for row in rows:
        name = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
        results[name] = {"tokens_per_second": row["avg_ts"], "stddev": row["stddev_ts"], "threads": row["n_threads"]}
    return {"command": " ".join(command), **results}


def batched_bench_command(llama_bin: Path | None, gguf_file: Path, threads: int, batches, prompt_tokens: int,
                          gen_tokens: int) -> list[str]:
    context = max(batches) * (prompt_tokens + gen_tokens)
    # One more run of the smallest batch at the end, whose line is not read: llama.cpp's log is written by a thread
    # of its own, and the last line before the process exits is sometimes lost (seen here: rc 0, no B=8 line).
    runs = [*batches, min(batches)]
    return [str(find_binary(BATCHED_BENCH, llama_bin)), "-m", str(gguf_file), "-t", str(threads), "-tb", str(threads),
            "-c", str(context), "-b", "2048", "-ub", "512", "-npp", str(prompt_tokens), "-ntg", str(gen_tokens),
            "-npl", ",".join(str(b) for b in runs), "--output-format", "jsonl"]


def batched_bench(llama_bin: Path | None, gguf_file: Path, threads: int, batches=(1, 8, 16), prompt_tokens: int = 128,
                  gen_tokens: int = 128) -> dict:
    """{"B=8": {...}}: llama-batched-bench's B sequences of prompt_tokens each, then gen_tokens each decoded together;
    S_TG (generation tokens/s over all B), S_PP and the whole run's tokens/s, with the command."""
    command = batched_bench_command(llama_bin, gguf_file, threads, batches, prompt_tokens, gen_tokens)
    out = _run(command)
    results = {}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            row = json.loads(line)
            if f"B={row['pl']}" in results:  # the trailing run (see batched_bench_command)
                continue
            results[f"B={row['pl']}"] = {"generation_tokens_per_second": row["speed_tg"],
                                         "prompt_tokens_per_second": row["speed_pp"], "seconds": row["t"],
                                         "prompt_tokens": row["pp"], "gen_tokens": row["tg"], "batch": row["pl"]}
    missing = [b for b in batches if f"B={b}" not in results]
    if missing:
        raise LlamaCppFailed(f"{' '.join(command)} printed no JSON line for B = {missing}")
    return {"command": " ".join(command), **results}


def perplexity_from_logits(gguf_file, windows: list[list[int]], threads: int) -> dict:
    """Perplexity from llama.cpp's logits on a GGUF file, window by window as accuracy.perplexity scores ours (the
    reference for a file's own loss: a Q4_0 file requantized from Q4_1 loses what it loses in any engine).
    Raises ImportError without llama-cpp-python (the bench extra's only use of it)."""
    import numpy as np
    from llama_cpp import Llama

    window = max(len(w) for w in windows)
    llm = Llama(model_path=str(gguf_file), n_ctx=window + 1, n_batch=min(512, window), n_threads=threads,
                n_threads_batch=threads, logits_all=True, verbose=False)
    nll, scored = 0.0, 0
    try:
        for chunk in windows:
            llm.reset()
            llm.eval(chunk)
            logits = np.asarray(llm.scores[: len(chunk) - 1], dtype=np.float64)  # row i predicts token i + 1
            logprobs = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
            nll -= float(logprobs[np.arange(len(chunk) - 1), chunk[1:]].sum())
            scored += len(chunk) - 1
    finally:
        llm.close()
    return {"perplexity": math.exp(nll / scored), "mean_nll": nll / scored, "tokens_scored": scored, "windows": len(windows)}
