"""Scenario 3: requests arrive over time (Poisson, rate rising then falling), driving LLMEngine directly.

The rate goes from 1 to 8 requests per service time and back, so by Little's law the number running sweeps
1..8 and back: every decoder of [8, 4, 1] gets its turn. Every system is given the same arrival times.
"""
from __future__ import annotations

import random
import statistics
import time
from collections import Counter, deque

from .options import BenchOptions
from .workload import greedy_params, make_engine, make_prompts

LOW_CONCURRENCY, PEAK_CONCURRENCY = 1.0, 8.0
GRID_POINTS = 4096


def arrival_offsets(count: int, service_seconds: float, seed: int) -> list[float]:
    """`count` arrival times (seconds from the start) of a Poisson process whose rate rises linearly from
    LOW to PEAK concurrency per service time over the first half and falls back over the second."""
    low, peak = LOW_CONCURRENCY / service_seconds, PEAK_CONCURRENCY / service_seconds
    duration = 2 * count / (low + peak)  # the expected number of arrivals over `duration` is `count`

    def rate(t: float) -> float:
        half = duration / 2
        return low + (peak - low) * (1 - abs(t - half) / half) if t <= duration else low

    # Time rescaling: unit-rate arrivals E_k mapped through the inverse of the cumulative rate.
    step = duration / GRID_POINTS
    grid, cumulative = [0.0], [0.0]
    for i in range(1, GRID_POINTS + 1):
        grid.append(i * step)
        cumulative.append(cumulative[-1] + step * (rate(grid[-2]) + rate(grid[-1])) / 2)
    rng = random.Random(seed)
    offsets, unit_time, j = [], 0.0, 0
    for _ in range(count):
        unit_time += rng.expovariate(1.0)
        if unit_time >= cumulative[-1]:  # past the sweep: the low rate goes on
            offsets.append(duration + (unit_time - cumulative[-1]) / low)
            continue
        while cumulative[j + 1] < unit_time:
            j += 1
        fraction = (unit_time - cumulative[j]) / (cumulative[j + 1] - cumulative[j])
        offsets.append(grid[j] + fraction * step)
    return offsets


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"mean": None, "p50": None, "p90": None, "max": None}
    return {"mean": statistics.fmean(ordered), "p50": ordered[len(ordered) // 2],
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1]}


def run_arrivals(model, tokenizer, options: BenchOptions, offsets: list[float]) -> dict:
    engine = make_engine(model, tokenizer)
    runner = model.runner
    params = greedy_params(options)
    prompts = make_prompts(options, len(offsets), len(tokenizer), salt=1000)
    steps_before = dict(runner.decode_steps_per_decoder)
    pending = deque(zip(offsets, prompts, strict=True))
    finished, running_per_step = [], Counter()
    start = time.time()
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= time.time() - start:
            offset, prompt = pending.popleft()
            engine.add_request(engine.new_request_id(), None, prompt, params, arrival_time=start + offset)
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, pending[0][0] - (time.time() - start)))
            continue
        running_per_step[engine.scheduler.num_running] += 1
        finished.extend(out for out in engine.step() if out.finished)
    end = max(out.metrics.finished_time for out in finished)
    output_tokens = sum(len(out.outputs[0].token_ids) for out in finished)
    ttft = [out.metrics.first_token_time - out.metrics.arrival_time for out in finished]
    tpot = [(out.metrics.finished_time - out.metrics.first_token_time) / (len(out.outputs[0].token_ids) - 1)
            for out in finished if len(out.outputs[0].token_ids) > 1]
    return {
        "requests": len(finished), "seconds": end - start, "output_tokens": output_tokens,
        "output_tokens_per_second": output_tokens / (end - start),
        "ttft_seconds": _summary(ttft), "time_per_output_token_seconds": _summary(tpot),
        "decode_steps_per_decoder": {str(b): runner.decode_steps_per_decoder[b] - steps_before[b] for b in steps_before},
        "steps_by_num_running": {str(n): count for n, count in sorted(running_per_step.items())},
    }
