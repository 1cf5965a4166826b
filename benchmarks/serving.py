"""What users run, measured side by side on one machine in one run, for one quantization:

- served: `bucketserve serve` on our compiled directory and llama.cpp's `llama-server` on the same GGUF file at
  the same bits, both driven by streaming_client at each user count (llama-server restarted with -np = users);
  rounds alternate between the two so a slow spell of the shared machine falls on both;
- offline: LLM.generate on the same directory and the same conversations, `users` at a time (server / offline);
- engine to engine: LLM.generate at llama-bench's shapes (tgN from one token, ppN) and llama-batched-bench's
  (B prompts of P tokens, N tokens each), against those two binaries.

A peer that cannot run here is recorded as {"skipped": reason}, never left out.
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from bucketserve.engine.sampling_params import SamplingParams

from . import llama_cpp, servers, streaming_client

SERVED_MODEL_NAME = "bench"
WARMUP_TOKENS = 4


def _skipped(err: Exception) -> dict:
    return {"skipped": f"{type(err).__name__}: {err}"}


def _best(runs: list[dict]) -> dict:
    """The round of median tokens/s, with every round's tokens/s beside it."""
    ordered = sorted(runs, key=lambda r: r["output_tokens_per_second"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["rounds_tokens_per_second"] = [r["output_tokens_per_second"] for r in runs]
    return chosen


def served(directory: Path, gguf_file: Path | None, conversations: list[list[dict]], options, log, out_dir: Path) -> dict:
    """{"bucketserve serve": {users: run}, "llama-server": {users: run} or {"skipped": why}} for options.users."""
    def drive(url: str, users: int, tokens: int, per_user: int) -> dict:
        return streaming_client.drive(url, SERVED_MODEL_NAME, conversations, users, per_user, tokens)

    ours: dict = {}
    theirs: dict = {}
    port = servers.free_port()
    command = servers.bucketserve_command(directory, port, SERVED_MODEL_NAME)
    with servers.running("bucketserve serve", command, port, out_dir / "bucketserve-serve.log",
                         servers.thread_env(options.threads)) as our_url:
        drive(our_url, 1, WARMUP_TOKENS, 1)
        for users in options.users:
            our_runs, their_runs = [], []
            try:
                if gguf_file is None:
                    raise llama_cpp.LlamaCppMissing("left out by --skip llama.cpp")
                their_port = servers.free_port()
                their_command = llama_cpp.server_command(options.llama_bin, gguf_file, their_port, users, options.threads,
                                                         options.max_seq_len)
            except llama_cpp.LlamaCppMissing as err:
                theirs = {"skipped": str(err)}
                their_command = None
            if their_command is None:
                log(f"served, {users} users: bucketserve serve ({theirs['skipped']})")
                for _ in range(options.repeats):
                    our_runs.append(drive(our_url, users, options.new_tokens, options.requests_per_user))
                ours[str(users)] = {**_best(our_runs), "command": " ".join(command)}
                continue
            try:
                with servers.running("llama-server", their_command, their_port, out_dir / "llama-server.log") as their_url:
                    drive(their_url, 1, WARMUP_TOKENS, 1)
                    log(f"served, {users} users: bucketserve serve and llama-server -np {users}, {options.repeats} rounds")
                    for round_index in range(options.repeats):
                        pair = [(our_url, our_runs), (their_url, their_runs)]
                        for url, runs in pair if round_index % 2 == 0 else pair[::-1]:
                            runs.append(drive(url, users, options.new_tokens, options.requests_per_user))
                theirs[str(users)] = {**_best(their_runs), "command": " ".join(their_command)}
            except Exception as err:  # a peer that fails to start or answer is skipped with the reason
                theirs[str(users)] = _skipped(err)
                while len(our_runs) < options.repeats:
                    our_runs.append(drive(our_url, users, options.new_tokens, options.requests_per_user))
            ours[str(users)] = {**_best(our_runs), "command": " ".join(command)}
    return {"bucketserve serve": ours, "llama-server": theirs}


def _generate(llm, prompts: list, params: SamplingParams) -> dict:
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    # The decode phase alone: from the last request's first token to the last one's finish.
    first = max(out.metrics.first_token_time for out in outputs)
    last = max(out.metrics.finished_time for out in outputs)
    decoded = sum(len(out.outputs[0].token_ids) - 1 for out in outputs)
    return {"seconds": seconds, "output_tokens": tokens, "output_tokens_per_second": tokens / seconds,
            "decode_tokens_per_second": decoded / (last - first) if last > first else None}


def offline(llm, conversations: list[list[dict]], options) -> dict:
    """LLM.chat on the conversations the server got, `users` at a time, as many rounds as each user sent
    requests: the same prompts, concurrency and tokens as the served run, without HTTP."""
    params = SamplingParams(temperature=0.0, max_tokens=options.new_tokens, ignore_eos=True)
    llm.chat(conversations[:1], SamplingParams(temperature=0.0, max_tokens=WARMUP_TOKENS, ignore_eos=True), use_tqdm=False)
    results = {}
    for users in options.users:
        rounds = []
        for _ in range(options.repeats):
            started, tokens = time.perf_counter(), 0
            for turn in range(options.requests_per_user):
                batch = [conversations[(u * options.requests_per_user + turn) % len(conversations)] for u in range(users)]
                tokens += sum(len(out.outputs[0].token_ids) for out in llm.chat(batch, params, use_tqdm=False))
            seconds = time.perf_counter() - started
            rounds.append({"users": users, "seconds": seconds, "output_tokens": tokens,
                           "output_tokens_per_second": tokens / seconds})
        results[str(users)] = _best(rounds)
    return results


def engine_shapes(options) -> dict:
    """llama-bench's and llama-batched-bench's shapes, shrunk to fit a small max_seq_len (--quick)."""
    room = options.max_seq_len - 1
    batched_prompt = min(128, room // 2)
    return {"pp": min(512, room), "tg": min(128, room), "batched_prompt": batched_prompt,
            "batched_gen": min(128, room - batched_prompt), "batches": tuple(options.users)}


def _token_prompts(count: int, length: int, vocab: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    first = min(16, vocab - 1)  # past the special tokens at the start of the vocabulary
    return [{"prompt_token_ids": [rng.randrange(first, vocab) for _ in range(length)]} for _ in range(count)]


def offline_engine(llm, options) -> dict:
    """Our engine alone at the peers' shapes: tgN (one prompt token, N generated: decode tokens/s), ppN (an N-token
    prompt, one generated: prompt tokens/s), and B=b (b prompts of P tokens, N tokens each: decode tokens/s over
    all b, like llama-batched-bench's S_TG). Random token ids, new each round (no prefix-cache hits)."""
    shapes, vocab = engine_shapes(options), llm.llm_engine.vocab_size
    greedy = lambda n: SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)  # noqa: E731
    _generate(llm, _token_prompts(1, 8, vocab, 0), greedy(WARMUP_TOKENS))
    seed, results = iter(range(1, 10_000)), {}
    tg = [_generate(llm, _token_prompts(1, 1, vocab, next(seed)), greedy(shapes["tg"])) for _ in range(options.repeats)]
    results[f"tg{shapes['tg']}"] = {"tokens_per_second": statistics.median(r["decode_tokens_per_second"] for r in tg)}
    pp = [_generate(llm, _token_prompts(1, shapes["pp"], vocab, next(seed)), greedy(1)) for _ in range(options.repeats)]
    results[f"pp{shapes['pp']}"] = {"tokens_per_second": shapes["pp"] / statistics.median(r["seconds"] for r in pp)}
    for batch in shapes["batches"]:
        runs = [_generate(llm, _token_prompts(batch, shapes["batched_prompt"], vocab, next(seed)), greedy(shapes["batched_gen"]))
                for _ in range(options.repeats)]
        results[f"B={batch}"] = {"generation_tokens_per_second": statistics.median(r["decode_tokens_per_second"] for r in runs),
                                 "tokens_per_second_with_prefill": statistics.median(r["output_tokens_per_second"] for r in runs),
                                 "prompt_tokens": shapes["batched_prompt"], "gen_tokens": shapes["batched_gen"], "batch": batch}
    return results


def llama_cpp_engine(gguf_file: Path, options) -> dict:
    """{"llama-bench": ..., "llama-batched-bench": ...} at engine_shapes, each its figures or {"skipped": why}."""
    shapes, results = engine_shapes(options), {}
    try:
        results["llama-bench"] = llama_cpp.llama_bench(options.llama_bin, gguf_file, options.threads, shapes["pp"],
                                                       shapes["tg"], repetitions=options.repeats)
    except (llama_cpp.LlamaCppMissing, llama_cpp.LlamaCppFailed, OSError) as err:
        results["llama-bench"] = _skipped(err)
    try:
        results["llama-batched-bench"] = llama_cpp.batched_bench(options.llama_bin, gguf_file, options.threads,
                                                                 shapes["batches"], shapes["batched_prompt"],
                                                                 shapes["batched_gen"])
    except (llama_cpp.LlamaCppMissing, llama_cpp.LlamaCppFailed, OSError) as err:
        results["llama-batched-bench"] = _skipped(err)
    return results
