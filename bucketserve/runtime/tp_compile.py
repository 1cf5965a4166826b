"""Compiling a tensor-parallel directory: one process per rank shards and saves its weights; rank 0 compiles
the graphs, with the all-reduces inside them (functional collectives), and every other rank's folder gets a
copy. The ranks' graphs are the same code (weights are left out of the packages, and every rank's shard has the
same shapes), so compiling them once is N times less work than compiling them on every rank; a host still needs
only its own rank's folder.

Each rank compiles in its own interpreter, in compile_rank_main (see worker_process.py). Here in runtime/, with the
other rank processes, rather than in compiler/: the compiler writes one rank's files (compiler/build.py) and knows
nothing of processes.
"""
from __future__ import annotations

import shutil
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from ..checkpoints import Checkpoint, open_checkpoint
from ..compiler.build import quantized_tensors, write_rank_files
from ..compiler.directory_layout import GRAPHS_DIR, rank_dir
from ..compiler.manifest import write_manifest
from ..config import CompileConfig
from ..models.config import ModelConfig
from ..models.tensor_parallel import shard_model
from . import distributed
from .weights import build_model, checkpoint_state
from .worker_process import WorkerProcess


def _compile_rank(job: dict) -> dict[str, float]:
    config = CompileConfig.from_dict(job["compile_config"])
    rank, world_size = job["rank"], config.tensor_parallel_size
    distributed.init_process_group(rank, world_size, job["port"], config.device)
    try:
        device = distributed.rank_device(config.device, rank)
        checkpoint = open_checkpoint(job["source"])
        model_config = ModelConfig.from_dict(job["model_config"])
        full = build_model(model_config, config, checkpoint_state(checkpoint, config, model_config), device)
        model = shard_model(full, rank, world_size)
        return write_rank_files(checkpoint, Path(job["out_dir"]), model, config, rank, world_size, compile_graphs=rank == 0)
    finally:
        distributed.destroy_process_group()


def compile_tensor_parallel(checkpoint: Checkpoint, out_dir: Path, compile_config: CompileConfig,
                            model_config: ModelConfig) -> None:
    port = distributed.free_port()
    workers = [
        WorkerProcess(compile_rank_main, dict(rank=rank, port=port, source=str(checkpoint.source), out_dir=str(out_dir),
                                              compile_config=compile_config.to_dict(), model_config=model_config.to_dict()),
                      name=f"compile rank {rank}")
        for rank in range(compile_config.tensor_parallel_size)
    ]
    compile_seconds: dict[str, float] = {}
    failure = None
    try:
        pending = list(workers)
        while pending and failure is None:
            for worker in list(pending):
                if worker.conn.poll(0.2):
                    status, detail = worker.conn.recv()
                    pending.remove(worker)
                    if status == "error":
                        failure = f"{worker.name}:\n{detail}"
                    else:
                        compile_seconds.update(detail)
                elif not worker.is_alive():  # killed outright: it reports nothing
                    failure = f"{worker.name} exited with code {worker.exitcode}"
    finally:
        for worker in workers:
            worker.stop(timeout=0 if failure else 30)
    if failure:
        raise RuntimeError(f"tensor-parallel compilation failed on {failure}")
    if compile_config.compiler == "aoti":
        graphs = rank_dir(out_dir, 0, compile_config.tensor_parallel_size) / GRAPHS_DIR
        for rank in range(1, compile_config.tensor_parallel_size):
            shutil.copytree(graphs, rank_dir(out_dir, rank, compile_config.tensor_parallel_size) / GRAPHS_DIR)
    write_manifest(out_dir, compile_config.to_dict(), model_config.to_dict(), dict(sorted(compile_seconds.items())),
                   checkpoint.describe(), quantized_tensors(checkpoint, compile_config, model_config.tie_word_embeddings))


def compile_rank_main(conn: Connection) -> None:
    """One compile rank's process (see worker_process.py)."""
    job = conn.recv()
    try:
        conn.send(("done", _compile_rank(job)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
