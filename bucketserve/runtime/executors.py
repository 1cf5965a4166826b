"""Which executor runs a compiled directory in this process: one rank here, ranks spawned on this host, or the
ranks a launcher such as torchrun started (this process is one of them, told by RANK / WORLD_SIZE); and the
executor a compile leaves running over the directory it wrote."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import Checkpoint
from ..compiler.build import build_compiled_directory
from ..compiler.manifest import verify_manifest
from ..config import CompileConfig
from ..models.config import ModelConfig
from .distributed import RankPlacement
from .executor import Executor, LocalExecutor
from .model_runner import ModelRunner
from .rank_launch import join_launched_ranks
from .rank_loader import load_rank_runner
from .tp_compile import compile_tensor_parallel
from .tp_executor import spawn_tensor_parallel
from .weights import build_model, checkpoint_state


def compile_executor(checkpoint: Checkpoint, out_dir: Path, compile_config: CompileConfig,
                     model_config: ModelConfig) -> Executor:
    """Compile checkpoint into out_dir, then run it: in this process over the weights just built; with tensor
    parallelism one process per rank compiles, and the ranks that serve are spawned afterwards."""
    if compile_config.tensor_parallel_size == 1:
        device = torch.device(compile_config.device)
        model = build_model(model_config, compile_config, checkpoint_state(checkpoint, compile_config, model_config), device)
        build_compiled_directory(checkpoint, out_dir, model, compile_config)
        executor = LocalExecutor(out_dir, ModelRunner(out_dir, model, compile_config, device))
        checkpoint.release_pages()  # see load_rank_runner
        return executor
    checkpoint.release_pages()  # the ranks open the checkpoint themselves
    compile_tensor_parallel(checkpoint, out_dir, compile_config, model_config)
    return spawn_tensor_parallel(out_dir, compile_config, model_config)


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
