"""Loading one rank's runner from a compiled directory: its weight shard, model and graphs."""
from __future__ import annotations

from pathlib import Path

from ..checkpoints.safetensors_checkpoint import map_safetensors
from ..compiler.directory_layout import rank_dir
from ..config import CompileConfig
from ..models.config import ModelConfig
from .distributed import rank_device
from .model_runner import ModelRunner
from .weights import build_model


def load_rank_runner(directory: Path, compile_config: CompileConfig, model_config: ModelConfig, rank: int,
                     local_rank: int | None = None) -> ModelRunner:
    """local_rank: the rank's place on its host (its GPU); the rank itself when every rank is on this host."""
    world_size = compile_config.tensor_parallel_size
    folder = rank_dir(directory, rank, world_size)
    device = rank_device(compile_config.device, rank if local_rank is None else local_rank)
    shard = (rank, world_size) if world_size > 1 else None
    weights = map_safetensors(folder)
    model = build_model(model_config, compile_config, weights.tensors, device, shard=shard)
    runner = ModelRunner(folder, model, compile_config, device)
    # Loading read every weight once (to reorder, cast or move it). Compiled graphs on the CPU read few of
    # the plain ones again (embedding rows, norms); whatever is read comes back from the file as it is.
    weights.release_pages()
    return runner
