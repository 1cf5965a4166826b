"""Where one decode step's time goes: matmuls, attention and the other kernels, the runtime's host work,
sampling, and the engine's Python bookkeeping.

- The compiled graph at full context is timed alone (its inputs built beforehand) and inside
  model.decode (the runtime's host work is the difference). The same graph with every row at position
  CONTEXT_GRANULE - 1, reading only the first CONTEXT_GRANULE positions, is the step's cost without the
  context: weights (matmuls), norms, rotary, sampling-free logits. Full minus that is what reading and attending over the rest of the context costs.
- For comparison, every weight matrix applied to `batch` rows, uncompiled, by models.projections.dense_linear:
  the GEMM the prefill and the eager engine call (oneDNN's on the CPU).
- The eager model at the same shapes under torch.profiler splits the attention into its ops.
- An engine run of the group of 8 times every step, its decode call and its sampler call.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

from bucketserve.compiler.graph_specs import CONTEXT_GRANULE
from bucketserve.models.projections import dense_linear

from .options import BUCKETS, BenchOptions
from .scenarios import full_context_tables
from .systems import system_name
from .timing import sorted_seconds
from .workload import greedy_params, make_engine, make_prompts

REPEATS = 5
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")
ATTENTION_OPS = ("aten::index", "aten::index_copy_", "aten::_scaled_dot_product", "aten::scaled_dot_product",
                 "aten::_softmax", "aten::softmax", "aten::baddbmm")


def _graph_inputs(model, batch: int, context_len: int) -> tuple:
    """A decoder's inputs with every row at position context_len - 1, reading the first context_len positions
    (the attention kernel reads up to each row's position whatever context_positions holds)."""
    cache = model.kv_cache
    last = context_len - 1
    tables = full_context_tables(model, batch)
    slots = [cache.slot(t, last) for t in tables]
    long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    context = model.runner.model.context_positions[:context_len]
    return long([1] * batch), long([last] * batch), long(slots), long(tables), context, cache.tensor


def _median_seconds(call, repeats: int = REPEATS) -> float:
    return statistics.median(sorted_seconds(call, repeats, warmup=1))


def _profiled_ops(call, repeats: int = REPEATS) -> dict[str, float]:
    """Self CPU seconds per call of each aten op recorded while `call` runs."""
    from torch.profiler import ProfilerActivity, profile

    call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            call()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            totals[event.key] += event.self_cpu_time_total / 1e6 / repeats
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def _split(ops: dict[str, float]) -> dict[str, float]:
    split = {"matmul_seconds": 0.0, "attention_seconds": 0.0, "other_ops_seconds": 0.0}
    for name, seconds in ops.items():
        if name.startswith(MATMUL_OPS):
            split["matmul_seconds"] += seconds
        elif name.startswith(ATTENTION_OPS):
            split["attention_seconds"] += seconds
        else:
            split["other_ops_seconds"] += seconds
    return split


def _matmuls(model, batch: int):
    """A call that applies every weight matrix (the lm_head included) to `batch` rows, as a decode step does."""
    matrices = [m.weight for m in model.runner.model.modules() if isinstance(m, torch.nn.Linear)]
    rows = {w.shape[1]: torch.randn(batch, w.shape[1], dtype=w.dtype) for w in matrices}

    def call():
        for weight in matrices:
            dense_linear(rows[weight.shape[1]], weight)

    return call


@torch.inference_mode()
def decoder_profile(model, batch: int, eager_model=None) -> dict:
    max_seq_len = model.compile_config.max_seq_len
    short = min(CONTEXT_GRANULE, max_seq_len)
    graph = model.runner.decoders[batch]
    tables = full_context_tables(model, batch)
    decode_seconds = _median_seconds(lambda: model.decode([1] * batch, [max_seq_len - 1] * batch, tables))
    full_inputs, short_inputs = _graph_inputs(model, batch, max_seq_len), _graph_inputs(model, batch, short)
    graph_seconds = _median_seconds(lambda: graph(*full_inputs))
    short_seconds = _median_seconds(lambda: graph(*short_inputs))
    result = {
        "batch": batch, "context_len": max_seq_len, "decode_seconds": decode_seconds, "graph_seconds": graph_seconds,
        "runtime_host_seconds": max(0.0, decode_seconds - graph_seconds),
        "short_context_len": short, "graph_short_context_seconds": short_seconds,
        "context_seconds": max(0.0, graph_seconds - short_seconds),
        "gemm_matmul_seconds": _median_seconds(_matmuls(model, batch)),
    }
    if eager_model is not None:
        eager_graph = eager_model.runner.decoders[batch]
        eager_inputs = _graph_inputs(eager_model, batch, max_seq_len)
        ops = _profiled_ops(lambda: eager_graph(*eager_inputs), repeats=2)
        result["eager"] = {**_split(ops), "top_ops_seconds": dict(list(ops.items())[:8])}
    return result


def engine_step_profile(model, tokenizer, options: BenchOptions, size: int = 8) -> dict:
    """Per step of an engine run of `size` requests: total, model.decode, the sampler, and the rest."""
    engine = make_engine(model, tokenizer)
    decode_times, sample_times = [], []
    original_decode, original_sampler = model.decode, engine.sampler

    def timed_decode(*args, **kwargs):
        started = time.perf_counter()
        out = original_decode(*args, **kwargs)
        if len(args[0]) == size:
            decode_times.append(time.perf_counter() - started)
        return out

    def timed_sampler(logits, seqs):
        started = time.perf_counter()
        out = original_sampler(logits, seqs)
        if len(seqs) == size:
            sample_times.append(time.perf_counter() - started)
        return out

    model.decode, engine.sampler = timed_decode, timed_sampler
    try:
        for prompt in make_prompts(options, size, len(tokenizer), salt=size):
            engine.add_request(engine.new_request_id(), None, prompt, greedy_params(options))
        step_times = []
        while engine.has_unfinished_requests():
            before = len(decode_times)
            started = time.perf_counter()
            engine.step()
            if len(decode_times) > before and engine.last_decoder_batch_size == size:
                step_times.append(time.perf_counter() - started)
    finally:
        del model.decode  # back to the class's method
        engine.sampler = original_sampler
    decode = statistics.median(decode_times) if decode_times else None
    sample = statistics.median(sample_times) if sample_times else None
    step = statistics.median(step_times) if step_times else None
    return {"requests": size, "steps": len(step_times), "step_seconds": step, "decode_seconds": decode,
            "sampling_seconds": sample,
            "engine_python_seconds": None if step is None else max(0.0, step - decode - sample)}


def profile_decode_step(loaded: dict, tokenizer, options: BenchOptions) -> dict:
    model = loaded[system_name(BUCKETS)]
    eager = loaded.get("eager")
    return {
        "decoders": {str(b): decoder_profile(model, b, eager) for b in sorted(model.compile_config.decoder_batch_sizes, reverse=True)},
        "engine_step": engine_step_profile(model, tokenizer, options),
    }
