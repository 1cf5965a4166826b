"""Compiling a tensor-parallel directory: one process per rank shards the weights and compiles its graphs
with the all-reduces inside them (functional collectives), all ranks at once since tracing needs the group.

Each rank compiles in its own interpreter, in compile_rank_main (see runtime/worker_process.py).
"""
from __future__ import annotations

import os
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from torch._inductor.runtime.cache_dir_utils import cache_dir

from ..checkpoints import Checkpoint, open_checkpoint
from ..config import CompileConfig
from ..models.config import ModelConfig
from ..models.tensor_parallel import shard_model
from ..runtime import distributed
from ..runtime.weights import build_model
from ..runtime.worker_process import WorkerProcess
from .build import write_rank_files
from .manifest import write_manifest


def _compile_rank(job: dict) -> dict[str, float]:
    config = CompileConfig.from_dict(job["compile_config"])
    rank, world_size = job["rank"], config.tensor_parallel_size
    distributed.init_process_group(rank, world_size, job["port"], config.device)
    try:
        device = distributed.rank_device(config.device, rank)
        checkpoint = open_checkpoint(job["source"])
        full = build_model(ModelConfig.from_dict(job["model_config"]), config, checkpoint.float_tensors(), device)
        model = shard_model(full, rank, world_size)
        return write_rank_files(checkpoint, Path(job["out_dir"]), model, config, rank, world_size)
    finally:
        distributed.destroy_process_group()


def rank_inductor_cache(rank: int) -> dict[str, str]:
    """Each compile rank its own Inductor cache. The ranks' graphs are the same code (the weights are not in
    them), so with one shared cache they wrote the same files at the same moment, and a package could take
    in a half-written file: a rank then failed to load with a JSON parse error."""
    return {"TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_dir(), f"tensor_parallel_rank{rank}")}


def compile_tensor_parallel(checkpoint: Checkpoint, out_dir: Path, compile_config: CompileConfig,
                            model_config: ModelConfig) -> None:
    port = distributed.free_port()
    workers = [
        WorkerProcess(compile_rank_main, dict(rank=rank, port=port, source=str(checkpoint.source), out_dir=str(out_dir),
                                              compile_config=compile_config.to_dict(), model_config=model_config.to_dict()),
                      name=f"compile rank {rank}", env=rank_inductor_cache(rank))
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
    write_manifest(out_dir, compile_config.to_dict(), model_config.to_dict(), dict(sorted(compile_seconds.items())),
                   checkpoint.describe())


def compile_rank_main(conn: Connection) -> None:
    """One compile rank's process (see runtime/worker_process.py)."""
    job = conn.recv()
    try:
        conn.send(("done", _compile_rank(job)))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
