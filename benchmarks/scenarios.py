"""Scenarios 1 and 2: step latency of each decoder at full context, and the seed's groups of 1, 4 and 8.

Both run on a loaded bucketserve model (compiled or eager); the arrivals scenario is in arrivals.py and
the peers in baselines.py.
"""
from __future__ import annotations

import functools
import statistics
import time

from .options import GROUP_SIZES, BenchOptions
from .roofline import step_floor
from .timing import sorted_seconds
from .workload import greedy_params, make_engine, make_prompts

WARMUP_STEPS = 2


def full_context_tables(model, batch: int) -> list[list[int]]:
    """`batch` disjoint block tables, each covering max_seq_len positions (block 0 is the padding block)."""
    blocks = model.compile_config.blocks_per_sequence
    return [list(range(1 + row * blocks, 1 + (row + 1) * blocks)) for row in range(batch)]


def step_latency(model, options: BenchOptions, bytes_per_second: float) -> dict:
    """Each decoder's step time with every row at the last position (the whole context is read)."""
    results = {}
    last = model.compile_config.max_seq_len - 1
    for batch in sorted(model.compile_config.decoder_batch_sizes, reverse=True):
        tables = full_context_tables(model, batch)
        ids, positions = [1] * batch, [last] * batch
        times = sorted_seconds(functools.partial(model.decode, ids, positions, tables), options.step_repeats, warmup=WARMUP_STEPS)
        floor = step_floor(model, batch, last + 1, bytes_per_second)
        median = statistics.median(times)
        results[str(batch)] = {
            "batch": batch, "context_len": last + 1, "median_seconds": median, "min_seconds": min(times),
            "repeats": len(times), **floor, "ratio_to_floor": median / floor["floor_seconds"],
            "achieved_bytes_per_second": floor["bytes"] / median,
        }
    return results


def run_requests(engine, prompts: list[list[int]], params) -> dict:
    """Add every prompt at once, step until all finish; time, output tokens and decoder use."""
    runner = engine.executor.driver
    steps_before = dict(runner.decode_steps_per_decoder)
    started = time.perf_counter()
    for prompt in prompts:
        engine.add_request(engine.new_request_id(), None, prompt, params)
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(out for out in engine.step() if out.finished)
    seconds = time.perf_counter() - started
    outputs.sort(key=lambda out: int(out.request_id))
    tokens = [out.outputs[0].token_ids for out in outputs]
    output_tokens = sum(len(t) for t in tokens)
    steps = {str(b): runner.decode_steps_per_decoder[b] - steps_before[b] for b in steps_before}
    return {"requests": len(prompts), "seconds": seconds, "output_tokens": output_tokens,
            "output_tokens_per_second": output_tokens / seconds, "decode_steps_per_decoder": steps,
            "token_ids": tokens}


def groups(model, tokenizer, options: BenchOptions) -> dict:
    """The seed's groups one after another: 1, 4 and 8 requests, prompt_len tokens, new_tokens each."""
    engine = make_engine(model, tokenizer)
    vocab = len(tokenizer)
    warmup = greedy_params(options)
    warmup.max_tokens = 2
    run_requests(engine, make_prompts(options, 1, vocab, salt=99), warmup)
    results = {str(size): run_requests(engine, make_prompts(options, size, vocab, salt=size), greedy_params(options))
               for size in GROUP_SIZES}
    results["total_seconds"] = sum(results[str(size)]["seconds"] for size in GROUP_SIZES)
    return results
