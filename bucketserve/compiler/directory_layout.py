"""Where things live in a compiled directory.

    config.json, generation_config.json, tokenizer files, bucketserve_manifest.json   (shared)
    model.safetensors, graphs/prefill.pt2, graphs/decoder_batch_{B}.pt2               (tensor_parallel_size 1)
    graphs/<graph>.packed.json, graphs/bucketserve_kernels.so                         (CPU fp32 graphs)
    rank{r}/model.safetensors, rank{r}/graphs/...                                      (one set per rank)
"""
from __future__ import annotations

from pathlib import Path

GRAPHS_DIR = "graphs"


def rank_dir(directory: Path, rank: int, world_size: int) -> Path:
    """The folder holding one rank's weight shard and graphs."""
    return directory if world_size == 1 else directory / f"rank{rank}"


def other_rank_file(relative_name: str, rank: int) -> bool:
    """Whether a file of the directory (its path inside it) belongs to a tensor-parallel rank other than `rank`."""
    top = Path(relative_name).parts[0]
    return top.startswith("rank") and top[4:].isdigit() and int(top[4:]) != rank
