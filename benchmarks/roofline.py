"""The floor under a decode step: the bytes it must read, over this machine's memory read bandwidth.

A decode step reads every weight once (the tied embedding too, as the lm_head; a quantized weight as the bytes
it is stored in: packed values, scales and mins) and, at full context,
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
    """Bytes per second read from a buffer far larger than the caches: the fastest of several readers, each
    the best of `repeats`. Noise on a shared machine only slows a reader down, and a reader that prefetches
    poorly reads below what the memory gives, so the fastest one is the closest to the machine's bound
    (run21: torch.sum read 15.5 GB/s where our decoders' steps read faster)."""
    buffer = torch.ones(buffer_bytes // 4, dtype=torch.float32)  # written once, so every page is resident
    readers = _readers(buffer)
    per_reader = {}
    for name, (read, nbytes) in readers.items():
        read()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - started)
        per_reader[name] = nbytes / best
    fastest = max(per_reader, key=per_reader.get)
    return {"buffer_bytes": readers[fastest][1], "seconds": readers[fastest][1] / per_reader[fastest],
            "bytes_per_second": per_reader[fastest], "threads": torch.get_num_threads(),
            "bytes_per_second_by_reader": per_reader,
            "method": f"the fastest of {', '.join(readers)} over a float32 buffer, each best of {repeats}: {fastest}"}


def _readers(buffer: torch.Tensor) -> dict:
    """{name: (read, bytes it reads)}: ways to read (nearly) every byte of `buffer` once, doing little else:
    a reduction, BLAS's matrix-vector product, and our GEMM kernel at one row where it serves this machine
    (it prefetches far ahead)."""
    from bucketserve.kernels import library

    matrix = buffer.view(-1, 1024)
    vector = torch.ones(1024)
    nbytes = buffer.numel() * 4
    readers = {"torch.sum": (buffer.sum, nbytes), "torch.mv": (lambda: torch.mv(matrix, vector), nbytes)}
    block_n = library.gemm_block_n() if buffer.device.type == "cpu" else None
    if block_n is not None:
        blocks = buffer[: buffer.numel() // (1024 * block_n) * 1024 * block_n].view(-1, 1024, block_n)  # any values
        row = torch.ones(1, 1024)
        read = lambda: torch.ops.bucketserve.blocked_linear(row, blocks, blocks.shape[0] * block_n)  # noqa: E731
        readers["bucketserve.blocked_linear"] = (read, blocks.numel() * 4)
    return readers


def weight_bytes_per_step(model, batch: int) -> int:
    """Weights one decode step reads: every stored tensor once (a quantized projection's packed values, scales
    and mins alike: whatever the model holds in its state dict, in the dtype it holds it); an untied embedding
    only for its `batch` rows. Buffers left out of the state dict (the rotary table) are not weights."""
    seen, total = set(), 0
    tied = model.model_config.tie_word_embeddings
    vocab = model.model_config.vocab_size
    for name, tensor in model.runner.model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        nbytes = tensor.numel() * tensor.element_size()
        if name.startswith("model.embed_tokens.") and not tied:
            nbytes = nbytes * min(batch, vocab) // vocab  # a lookup reads `batch` rows, whatever their encoding
        total += nbytes
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
