"""The floor under a decode step: the bytes it must read, over this machine's memory read bandwidth.

A decode step reads every weight once (the tied embedding too, as the lm_head) and, at full context,
each row's keys and values for every earlier position in every layer. Nothing faster than reading those
bytes once is possible, so step time / floor says how far the graph is from the memory bound.
"""
from __future__ import annotations

import os
import platform
import time

import torch

BANDWIDTH_BUFFER_BYTES = 1 << 30  # 1 GiB: far larger than any CPU cache


def read_bandwidth(buffer_bytes: int = BANDWIDTH_BUFFER_BYTES, repeats: int = 7) -> dict:
    """Bytes per second a reduction over a buffer far larger than the caches reads (best of repeats)."""
    buffer = torch.ones(buffer_bytes // 4, dtype=torch.float32)  # written once, so every page is resident
    buffer.sum()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - started)
    return {"buffer_bytes": buffer.numel() * 4, "seconds": best, "bytes_per_second": buffer.numel() * 4 / best,
            "threads": torch.get_num_threads(), "method": "torch.sum over a float32 buffer, best of %d" % repeats}


def weight_bytes_per_step(model, batch: int) -> int:
    """Weights one decode step reads: every parameter once; an untied embedding only for its `batch` rows."""
    seen, total = set(), 0
    embedding = model.runner.model.model.embed_tokens.weight
    tied = model.model_config.tie_word_embeddings
    for param in model.runner.model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        if param is embedding and not tied:
            total += batch * param.shape[1] * param.element_size()
        else:
            total += param.numel() * param.element_size()
    return total


def kv_bytes_per_token(model) -> int:
    """Key and value bytes of one token over all layers."""
    config = model.model_config
    element = model.kv_cache.tensor.element_size()
    return config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * element


def step_floor(model, batch: int, context_len: int, bytes_per_second: float) -> dict:
    """The bytes a decode step of `batch` rows at `context_len` must read, and that over the bandwidth."""
    weights = weight_bytes_per_step(model, batch)
    kv = batch * context_len * kv_bytes_per_token(model)
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes": weights + kv,
            "floor_seconds": (weights + kv) / bytes_per_second}


def machine_info() -> dict:
    import psutil

    info = {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "threads": torch.get_num_threads(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),  # other processes on the machine skew every timing
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
