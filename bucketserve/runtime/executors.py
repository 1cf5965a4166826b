"""Which executor runs a compiled directory in this process: one rank here, ranks spawned on this host, or the
ranks a launcher such as torchrun started (this process is one of them, told by RANK / WORLD_SIZE)."""
from __future__ import annotations

from pathlib import Path

from ..compiler.manifest import verify_manifest
from ..config import CompileConfig
from ..models.config import ModelConfig
from .distributed import RankPlacement
from .executor import Executor, LocalExecutor
from .rank_launch import join_launched_ranks
from .rank_loader import load_rank_runner
from .tp_executor import spawn_tensor_parallel


def load_executor(directory: Path, compile_config: CompileConfig, model_config: ModelConfig,
                  placement: RankPlacement | None) -> Executor:
    """placement: this process's place among launched ranks (RankPlacement.from_env()), None when not launched.
    A launched rank checks its own files only after joining the group (verify_manifest(rank=r)), so that a host
    missing its shard tells rank 0 so, rather than leaving it to wait for a rank that never joins."""
    if placement is not None and (placement.world_size > 1 or compile_config.tensor_parallel_size > 1):
        return join_launched_ranks(directory, placement, compile_config, model_config,
                                   check_files=lambda rank: verify_manifest(directory, rank=rank))
    if placement is not None:
        verify_manifest(directory)
    if compile_config.tensor_parallel_size == 1:
        return LocalExecutor(directory, load_rank_runner(directory, compile_config, model_config, rank=0))
    return spawn_tensor_parallel(directory, compile_config, model_config)
