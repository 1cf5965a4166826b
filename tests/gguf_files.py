"""GGUF files for the tests, written with gguf-py from tiny random checkpoints (checkpoints.gguf_writer),
plus the blocks gguf-py cannot make itself (K-quants) and damaged files for the error paths."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from bucketserve.checkpoints.base import QuantizedBlocks
from bucketserve.checkpoints.safetensors_checkpoint import map_safetensors

# Bytes per 256-weight block, and where its fp16 scales sit (offset, value): random bytes with these scales
# set make valid blocks whose weights have the spread of the checkpoint's (about 0.1).
K_QUANTS = {
    "Q4_K": (144, [(0, 1e-4), (2, 5e-4)]),
    "Q5_K": (176, [(0, 5e-5), (2, 5e-4)]),
    "Q6_K": (210, [(208, 2.5e-5)]),
}


def random_k_blocks(type_name: str, shape: tuple[int, int], seed: int) -> QuantizedBlocks:
    block_bytes, scales = K_QUANTS[type_name]
    rows, cols = shape
    assert cols % 256 == 0, "K-quant rows are runs of 256 weights"
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows, cols // 256, block_bytes), dtype=np.uint8)
    for offset, value in scales:
        blocks[:, :, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
    return QuantizedBlocks(type_name, shape, torch.from_numpy(blocks.reshape(rows, -1)))


def k_quant_tensor_types(checkpoint: Path, type_name: str) -> dict[str, QuantizedBlocks]:
    """Every 2-D weight of checkpoint as random blocks of a K-quant type."""
    tensors = map_safetensors(checkpoint).tensors
    return {name: random_k_blocks(type_name, tuple(t.shape), seed)
            for seed, (name, t) in enumerate(sorted(tensors.items())) if t.dim() == 2}


def write_bare_gguf(path: Path, architecture: str) -> Path:
    """A GGUF file of one architecture with a block count and one tensor, and nothing else (no tokenizer)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def patched_gguf(source: Path, target: Path, key: str, value) -> Path:
    """A copy of source with one scalar metadata field overwritten in place (same type, same size: a patched
    4-byte block_count claims 2^31 layers without a big file)."""
    import gguf

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(target, "r+")
    field = reader.fields[key]
    field.parts[field.data[0]][0] = value
    reader.data.flush()
    del reader
    return target


def poisoned_gguf(source: Path, target: Path, tensor_name: str) -> Path:
    """A copy of source whose tensor holds an Inf: its first value (F32), or its first block's float16 scale."""
    import gguf

    shutil.copyfile(source, target)
    reader = gguf.GGUFReader(target, "r+")
    tensor = next(t for t in reader.tensors if t.name == tensor_name)
    data = tensor.data.reshape(-1)
    if tensor.tensor_type == gguf.GGMLQuantizationType.F32:
        data[0] = np.inf
    else:
        data.view(np.uint8)[:2] = np.frombuffer(np.float16(np.inf).tobytes(), dtype=np.uint8)
    reader.data.flush()
    del reader
    return target
