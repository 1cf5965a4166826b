"""Timing a loaded model's decode steps and prefill, and fitting the cost table from them.

A compiled directory is timed on the decoders it holds (no candidate is compiled to be timed): one step
with every row live at each context length the traffic shows. The decode fit leaves one size out and
predicts it (the error reported), then is refitted on every size. An eager model (compiler="eager") runs
any batch size, so it can be timed at every candidate. The rows write their KV into the model's own
cache (every row its own blocks), which is why calibration wants a freshly loaded model.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from .cost_model import StepSample, fit_cost_model, fit_errors
from .cost_table import CostTable
from .graph_costs import GraphCosts
from .replay import PrefillCost
from .traffic_log import TrafficRecord


def contexts_from_trace(records: list[TrafficRecord] | None, max_seq_len: int) -> list[int]:
    """Context lengths to time at: the 10th, 50th and 90th percentile of each request's mid-generation
    context (prompt + half its output), or a spread over max_seq_len without a trace."""
    if not records:
        points = [max_seq_len // 8, max_seq_len // 2, max_seq_len - 1]
    else:
        mids = sorted(r.prompt_tokens + r.output_tokens // 2 for r in records)
        points = [mids[min(len(mids) - 1, int(q * len(mids)))] for q in (0.1, 0.5, 0.9)]
    return sorted({max(1, min(max_seq_len - 1, int(p))) for p in points})


def time_decode(model, batch: int, context: int, repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds of one decode step of `batch` live rows, each at position context - 1."""
    config = model.compile_config
    per_row = config.max_seq_len // config.kvcache_block_size
    tables = [list(range(1 + row * per_row, 1 + (row + 1) * per_row)) for row in range(batch)]
    ids, positions = [1] * batch, [context - 1] * batch
    times = []
    for i in range(warmup + repeats):
        started = time.perf_counter()
        model.decode(ids, positions, tables)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_prefill(model, repeats: int = 3) -> PrefillCost:
    """per_call + per_token fitted over prefills of 1 and of several rows of two lengths."""
    config = model.compile_config
    per_row = config.max_seq_len // config.kvcache_block_size
    shapes = [(1, 16), (1, config.prefill_chunk_size), (min(4, config.batch_size), config.prefill_chunk_size)]
    points = []
    for rows, length in shapes:
        tables = [list(range(1 + r * per_row, 1 + (r + 1) * per_row)) for r in range(rows)]
        times = []
        for i in range(repeats + 1):  # the first call warms up
            started = time.perf_counter()
            model.prefill_batch([[1] * length] * rows, tables, [0] * rows, [False] * rows)
            if i:
                times.append(time.perf_counter() - started)
        points.append((rows * length, statistics.median(times)))
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return PrefillCost(max(0.0, float(intercept)), max(0.0, float(slope)))


def calibrate(model, contexts: list[int], held_out: int | None = None, repeats: int = 5,
              sizes: list[int] | None = None) -> CostTable:
    """Time every size (default: the model's decoders) at every context; fit; check on held_out."""
    sizes = sorted(sizes or model.compile_config.decoder_batch_sizes)
    samples = [StepSample(b, ctx, time_decode(model, b, ctx, repeats)) for b in sizes for ctx in contexts]
    fit: dict = {"sizes": sizes, "contexts": contexts}
    if held_out is not None:
        if held_out not in sizes or len(sizes) < 3:
            raise ValueError(f"held-out size {held_out} must be one of the timed sizes {sizes}, with 2 others left to fit")
        trained = fit_cost_model([s for s in samples if s.batch != held_out])
        errors = fit_errors(trained, [s for s in samples if s.batch == held_out])
        fit.update(held_out=held_out, held_out_errors=[round(e, 4) for e in errors],
                   held_out_max_abs_error=round(max(abs(e) for e in errors), 4))
    model_fit = fit_cost_model(samples)
    errors = fit_errors(model_fit, samples)
    fit.update(max_abs_error=round(max(abs(e) for e in errors), 4),
               mean_abs_error=round(sum(abs(e) for e in errors) / len(errors), 4))
    return CostTable(model_fit, time_prefill(model), graph_costs(model), fit, samples)


def graph_costs(model) -> GraphCosts:
    """Each decoder's compile seconds (the manifest's) and bytes (its graph file, which loading maps)."""
    manifest = getattr(model, "manifest", {})  # an eager runner has none
    seconds, sizes = {}, {}
    for b in model.compile_config.decoder_batch_sizes:
        name = f"decoder_batch_{b}"
        if name in manifest.get("compile_seconds", {}):
            seconds[b] = float(manifest["compile_seconds"][name])
        entry = manifest.get("files", {}).get(f"graphs/{name}.pt2")
        if entry is not None:
            sizes[b] = float(entry["bytes"])
    return GraphCosts(seconds, sizes)
