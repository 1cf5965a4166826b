"""activations="int8" against weight-only on SmolLM2-135M (the real file and its Q4_0 / Q8_0 copies), and against
llama.cpp, which does the same int8 math. Standalone; prints JSON lines, one per measurement.

    python -m benchmarks.int8_activations accuracy      perplexity (bench/accuracy.py's scorer, the shipped text in
                                                        --windows 511-token windows) and greedy agreement (the chat
                                                        questions, --new-tokens each) of each file, weight-only vs int8;
                                                        eager compiles, which run the same kernels as the graphs
    python -m benchmarks.int8_activations ops [--floor] the projections of one decode step / one prefill chunk on
                                                        the model's real weight shapes, each kernel timed alone
                                                        (thread CPU time, best of 5), every row count asked;
                                                        --floor: and their weights' bytes over the read bandwidth
    python -m benchmarks.int8_activations llama         llama-bench (tg128, pp512) and llama-batched-bench
                                                        (B = 1, 8, 16) on the Q4_0 / Q8_0 copies

Files go to --work (default /tmp/int8_activations).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import torch

LLAMA_BIN = Path("/work/llama/build/bin")
# quantization option of ours -> the files it runs on (the real file is Q4_1; int4 keeps Q4_0 / Q4_1 blocks).
FILES = {"Q4_1": "int4", "Q4_0": "int4", "Q8_0": "int8"}


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def gguf_copies(work: Path) -> dict[str, Path]:
    """The real file and its Q4_0 / Q8_0 copies (checkpoints.gguf_writer.requantize_gguf), made once."""
    from bucketserve.checkpoints.gguf_writer import requantize_gguf
    from bucketserve.demo.smollm2 import smollm2_gguf

    source = Path(smollm2_gguf())
    files = {"Q4_1": source}
    for qtype in ("Q4_0", "Q8_0"):
        path = work / f"SmolLM2-135M-Instruct.{qtype}.gguf"
        if not path.exists():
            requantize_gguf(source, path, qtype)
        files[qtype] = path
    return files


def accuracy(args) -> None:
    from benchmarks import accuracy as scorer
    from benchmarks.chat_scenarios import chat_prompt_ids
    from benchmarks.workload import load_tokenizer
    from bucketserve import LLM, AutoModelForCausalLM
    from bucketserve.kernels import library

    assert library.build() is not None, "the kernels did not build: the eager model would run the torch reference"
    files = gguf_copies(args.work)
    for qtype in args.files:
        answers = {}
        for activations in (None, "int8"):
            with tempfile.TemporaryDirectory(dir=args.work) as out:
                model = AutoModelForCausalLM.from_pretrained(
                    files[qtype], export=True, compiler="eager", quantization=FILES[qtype], activations=activations,
                    max_seq_len=512, batch_size=8, prefill_chunk_size=128)
                model.save_pretrained(out)
                del model
                llm = LLM(model=out)
                tokenizer = load_tokenizer(out)
                text_ids = tokenizer(scorer.load_text())["input_ids"][: args.windows * 511]
                started = time.perf_counter()
                score = scorer.perplexity(llm, text_ids, 511)
                prompts = [chat_prompt_ids(tokenizer, q) for q in scorer.chat_questions()[: args.prompts]]
                answers[activations] = scorer.greedy_answers(llm, prompts, args.new_tokens)
                emit(kind="perplexity", file=qtype, quantization=FILES[qtype], activations=activations,
                     seconds=round(time.perf_counter() - started, 1), **score)
        emit(kind="greedy_agreement", file=qtype, reference="weight-only", other="activations=int8",
             **scorer.agreement(answers[None], answers["int8"]))


def _best_ms(f, reps: int) -> float:
    f()
    best = float("inf")
    for _ in range(5):
        started = time.thread_time()
        for _ in range(reps):
            f()
        best = min(best, (time.thread_time() - started) / reps * 1e3)
    return best


def ops(args) -> None:
    """One decode step's (or prefill chunk's) projections of SmolLM2 - 30 layers of q, k, v, o, gate, up, down
    in int4 (Q4_0 / Q4_1) or int8 (Q8_0), and the tied lm_head in int8 (the real file's Q8_0 embedding) - on
    random weights of the real shapes: the weight-only kernel against int8_activation_linear. With --floor, the
    bytes those weights hold over this machine's read bandwidth at the same threads (bench/roofline.py): the
    T9 floor of the step's weights (its KV cache and attention are not in either figure)."""
    from bucketserve.kernels import library
    from bucketserve.quantization.schemes import QUANTIZERS

    assert library.build() is not None
    torch.set_num_threads(args.threads)
    bandwidth = None
    if args.floor:
        from benchmarks import roofline

        bandwidth = roofline.read_bandwidth()["bytes_per_second"]
        emit(kind="read_bandwidth", threads=args.threads, gb_per_s=round(bandwidth / 1e9, 2))
    layer = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
    lm_head = (49152, 576)
    ops_by_path = {"weight-only": torch.ops.bucketserve.quantized_linear,
                   "int8": lambda *a: torch.ops.bucketserve.int8_activation_linear(*a, args.isa)}
    for bits in (4, 8):
        shapes = {(shape, bits): 30 * layer.count(shape) for shape in set(layer)} | {(lm_head, 8): 1}
        packed = {(shape, b): QUANTIZERS[b](torch.randn(*shape) * 0.05) for shape, b in shapes}
        weight_bytes = sum(count * sum(t.numel() * t.element_size() for t in packed[key][:3] if t is not None)
                           for key, count in shapes.items())
        for rows in args.rows:
            totals = {}
            for path, op in ops_by_path.items():
                total = 0.0
                for ((n, k), b), count in shapes.items():
                    w = packed[((n, k), b)]
                    x = torch.randn(rows, k)
                    reps = max(2, int(3e7 / (n * k * max(rows, 4))))
                    total += count * _best_ms(lambda op=op, x=x, w=w, n=n, k=k: op(x, w.qweight, w.scales, w.mins, n, k), reps)
                totals[path] = total
            floor = {} if bandwidth is None else {"floor_ms": round(weight_bytes / bandwidth * 1e3, 3),
                                                  "int8_over_floor": round(totals["int8"] / (weight_bytes / bandwidth * 1e3), 2)}
            emit(kind="step_projections", bits=bits, rows=rows, threads=args.threads, weight_mb=round(weight_bytes / 1e6, 1),
                 weight_only_ms=round(totals["weight-only"], 3), int8_ms=round(totals["int8"], 3),
                 speedup=round(totals["weight-only"] / totals["int8"], 2),
                 weight_only_tokens_per_s=round(rows / totals["weight-only"] * 1e3, 1),
                 int8_tokens_per_s=round(rows / totals["int8"] * 1e3, 1), **floor)


def llama(args) -> None:
    files = gguf_copies(args.work)
    for qtype in ("Q4_0", "Q8_0"):
        out = subprocess.run([str(LLAMA_BIN / "llama-bench"), "-m", str(files[qtype]), "-t", str(args.threads),
                              "-p", "512", "-n", "128", "-r", str(args.repetitions), "-o", "json"], capture_output=True, text=True)
        if out.returncode:
            emit(kind="llama-bench", file=qtype, error=out.stderr[-400:])
        else:
            for run in json.loads(out.stdout):
                emit(kind="llama-bench", file=qtype, n_prompt=run["n_prompt"], n_gen=run["n_gen"],
                     tokens_per_s=round(run["avg_ts"], 1), threads=run["n_threads"])
        out = subprocess.run([str(LLAMA_BIN / "llama-batched-bench"), "-m", str(files[qtype]), "-t", str(args.threads),
                              "-c", "4096", "-npp", "128", "-ntg", "128", "-npl", "1,8,16"],
                             capture_output=True, text=True)
        rows = [line for line in out.stdout.splitlines() if re.match(r"\|\s+\d+\s+\|", line)]
        for line in rows:  # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
            cells = [c.strip() for c in line.strip("|").split("|")]
            emit(kind="llama-batched-bench", file=qtype, B=int(cells[2]), S_PP=float(cells[5]), S_TG=float(cells[7]))
        if not rows:
            emit(kind="llama-batched-bench", file=qtype, error=(out.stderr or out.stdout)[-400:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["accuracy", "ops", "llama"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/int8_activations"))
    parser.add_argument("--files", nargs="+", default=list(FILES), choices=list(FILES))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 128, 512])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", default="auto", help="int8_activation_linear's path (ops): auto, avx512_vnni, ...")
    parser.add_argument("--floor", action="store_true", help="ops: also the weights' T9 floor")
    parser.add_argument("--windows", type=int, default=7, help="accuracy: 511-token windows of the text (7: all)")
    parser.add_argument("--prompts", type=int, default=16, help="accuracy: chat questions answered (16: all)")
    parser.add_argument("--new-tokens", type=int, default=64, help="accuracy: greedy tokens per answer")
    parser.add_argument("--repetitions", type=int, default=5, help="llama: llama-bench's -r")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    {"accuracy": accuracy, "ops": ops, "llama": llama}[args.what](args)


if __name__ == "__main__":
    main()
