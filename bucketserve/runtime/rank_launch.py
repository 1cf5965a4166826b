"""Tensor-parallel ranks a launcher started (torchrun, on one host or several): join its process group, load
this rank's shard, and become rank 0's executor (TensorParallelExecutor) or a rank that follows it
(FollowerExecutor).

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 0 --rdzv-endpoint HOST:PORT script.py   # on host 0
    torchrun --nnodes 2 --nproc-per-node 1 --node-rank 1 --rdzv-endpoint HOST:PORT script.py   # on host 1

Start-up, every rank: refuse a world size other than the compiled tensor_parallel_size (before joining, so
nothing waits); join the group; connect the control channel (rank_channel.py); check and load this rank's files
(the shared ones and rank{r}/: a host needs no other rank's); then each rank tells rank 0 it is ready or why
not, and rank 0 answers "start" or fails, naming the rank and its error.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from pathlib import Path

from ..config import CompileConfig
from ..models.config import ModelConfig
from . import distributed
from .distributed import RankPlacement
from .executor import Executor, TensorParallelError
from .model_runner import ModelRunner
from .rank_channel import connect_to_rank0, listen_as_rank0
from .rank_follower import FollowerExecutor
from .rank_loader import load_rank_runner
from .tp_executor import READY_TIMEOUT_S, TensorParallelExecutor


def check_world_size(placement: RankPlacement, compile_config: CompileConfig, directory: Path) -> None:
    compiled = compile_config.tensor_parallel_size
    if placement.world_size != compiled:
        raise ValueError(
            f"the launcher started WORLD_SIZE={placement.world_size} ranks, but {directory} was compiled with "
            f"tensor_parallel_size={compiled}: launch {compiled} ranks in all (torchrun's --nnodes x --nproc-per-node), "
            f"recompile with tensor_parallel_size={placement.world_size}, or run without torchrun's RANK / WORLD_SIZE "
            "to let LLM start its own ranks on this host"
        )


class LaunchedRank:
    """Rank 0's handle on a launched rank: the control connection. The rank sends nothing after it is ready,
    so a readable connection means a closed one."""

    def __init__(self, rank: int, conn: Connection):
        self.name = f"rank {rank}"
        self.conn = conn
        self._gone = False

    def is_alive(self) -> bool:
        if self._gone:
            return False
        try:
            while self.conn.poll(0):
                self.conn.recv()  # nothing is expected once it is ready; only the end of the stream matters
        except (EOFError, OSError):
            self._gone = True
        return not self._gone

    def exit_description(self) -> str:
        return "closed its connection to rank 0 (its process ended, or its host stopped answering)"

    def stop(self, timeout: float) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        self.conn.close()

    def abandon(self) -> None:
        """Close its connection: it ends its call, or its collective fails, with a TensorParallelError."""
        self.conn.close()


def join_launched_ranks(directory: Path, placement: RankPlacement, compile_config: CompileConfig,
                        model_config: ModelConfig, check_files: Callable[[int], None]) -> Executor:
    """check_files(rank): raises, naming the file, when this host lacks a file that rank needs."""
    check_world_size(placement, compile_config, directory)
    distributed.die_with_launcher()
    timeout = distributed.rank_timeout()
    distributed.init_process_group_from_env(placement, compile_config.device)

    def load_local() -> ModelRunner:
        check_files(placement.rank)
        return load_rank_runner(directory, compile_config, model_config, placement.rank, placement.local_rank)

    try:
        if placement.rank == 0:
            peers = listen_as_rank0(placement.world_size, timeout)
            workers = [LaunchedRank(rank, conn) for rank, conn in sorted(peers.items())]
            return TensorParallelExecutor(directory, workers, load_local, scripts_on_every_rank=True)
        conn = connect_to_rank0(placement.rank, timeout)
    except BaseException:
        distributed.destroy_process_group()
        raise
    try:
        local = _load_and_report(conn, load_local)
        _wait_for_start(conn, placement.rank, timeout)
    except BaseException:
        conn.close()
        distributed.destroy_process_group()
        raise
    return FollowerExecutor(directory, local, conn, placement.rank)


def _load_and_report(conn: Connection, load_local: Callable[[], ModelRunner]) -> ModelRunner:
    try:
        local = load_local()
    except BaseException as err:
        conn.send(("error", f"{type(err).__name__}: {err}"))
        raise
    conn.send(("ready", None))
    return local


def _wait_for_start(conn: Connection, rank: int, timeout: timedelta) -> None:
    """Rank 0 answers once every rank has loaded (up to READY_TIMEOUT_S, as rank 0 waits for the slowest)."""
    deadline = time.monotonic() + READY_TIMEOUT_S + timeout.total_seconds()
    while not conn.poll(1.0):
        if time.monotonic() > deadline:
            raise TensorParallelError(f"rank {rank}: rank 0 did not start the model within {READY_TIMEOUT_S} s")
    try:
        kind, _ = conn.recv()
    except (EOFError, OSError) as err:
        raise TensorParallelError(f"rank {rank}: rank 0 went away while the ranks were loading (see rank 0's error; "
                                  "another rank may have failed to load)") from err
    if kind != "start":
        raise TensorParallelError(f"rank {rank}: rank 0 closed the model while the ranks were loading: it, or another "
                                  "rank, failed to load (see rank 0's error)")

