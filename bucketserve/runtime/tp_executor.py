"""Tensor parallelism at run time, rank 0's side: this process runs rank 0 and drives the other ranks, either
workers it spawned on this host (spawn_tensor_parallel) or ranks a launcher such as torchrun started, possibly
on other hosts (rank_launch.py).

Every call(method, *args) is sent to each other rank first, as ("call", (method, args)), then run here; the graphs' all-reduces keep the
ranks in step, so every rank runs the same decoder for a step. Only rank 0's logits are used. A call that
stops part-way (a rank died or hung, a collective failed, Ctrl-C) leaves the ranks out of step: the runner
then drops the other ranks and closes, and every later call is a clear error (never a result computed from
mismatched collectives), so a new model can be made.

Each spawned worker runs worker_main in its own interpreter (see worker_process.py).
"""
from __future__ import annotations

import logging
import pickle
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Protocol

from ..config import CompileConfig
from ..models.config import ModelConfig
from . import distributed
from .executor import Executor, ScriptCall, TensorParallelError
from .model_runner import ModelRunner
from .rank_follower import GONE, follow_calls
from .rank_loader import load_rank_runner
from .worker_process import WorkerProcess

__all__ = ["TensorParallelError", "TensorParallelExecutor", "spawn_tensor_parallel"]

logger = logging.getLogger(__name__)
READY_TIMEOUT_S = 600  # loading a rank's graphs and weights


class OtherRank(Protocol):
    """Rank 0's handle on another rank: a spawned WorkerProcess, or a launched rank's connection (rank_launch)."""

    name: str
    conn: Connection

    def is_alive(self) -> bool: ...
    def exit_description(self) -> str: ...
    def stop(self, timeout: float) -> None: ...
    def abandon(self) -> None: ...


def _shutdown(workers: list[OtherRank]) -> None:
    deadline = time.monotonic() + 10
    for worker in workers:
        worker.stop(timeout=max(0.0, deadline - time.monotonic()))
    distributed.destroy_process_group()


class TensorParallelExecutor(Executor):
    def __init__(self, directory: Path, workers: list[OtherRank], load_local: Callable[[], ModelRunner],
                 scripts_on_every_rank: bool):
        """workers: the other ranks, already started; load_local: joins the group (if not yet) and loads rank 0's
        shard. scripts_on_every_rank: the other ranks run the user's script too (launched), so each of its calls
        ends with rank 0's result sent to them (script_call)."""
        self.workers = workers
        self.scripts_on_every_rank = scripts_on_every_rank
        self._call_depth = 0
        self._finalizer = weakref.finalize(self, _shutdown, self.workers)
        try:
            super().__init__(directory, load_local())
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for worker in self.workers:
            while not worker.conn.poll(0.2):  # a rank that died or vanished makes it readable: recv then fails
                if time.monotonic() > deadline:
                    raise TensorParallelError(f"{worker.name} did not load within {READY_TIMEOUT_S} s")
            try:
                status, detail = worker.conn.recv()
            except (EOFError, OSError) as err:
                raise TensorParallelError(f"{worker.name} {worker.exit_description()} while loading") from err
            if status != "ready":
                raise TensorParallelError(f"{worker.name} failed to load: {detail}")
        if self.scripts_on_every_rank:
            self._send_all(("start", None))

    def _check_workers_alive(self) -> None:
        for worker in self.workers:
            if not worker.is_alive():
                raise TensorParallelError(
                    f"{worker.name} {worker.exit_description()}; this model cannot run any more: create a new LLM / model"
                )

    def _send_all(self, message) -> None:
        for worker in self.workers:
            worker.conn.send(message)

    def call(self, method: str, *args):
        if not self._finalizer.alive:
            raise TensorParallelError("this tensor-parallel model was closed; create a new one")
        run = getattr(self.driver, method)  # a name the runner lacks fails here, before any rank is sent it
        try:
            self._check_workers_alive()
            self._send_all(("call", (method, args)))
            return run(*args)
        except (ValueError, TypeError):
            raise  # a bad request, refused by every rank alike before any collective: still in step
        except TensorParallelError:
            self.close()
            raise
        except BaseException as err:  # a collective failed or timed out, a rank died, or Ctrl-C: out of step
            self._abandon()
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt and the like go on up; the model is closed
            raise TensorParallelError(
                f"a tensor-parallel call failed during {method} ({err}); this model cannot run any more: "
                f"create a new LLM / model"
            ) from err

    def _abandon(self) -> None:
        """Drop the other ranks (they may wait in a collective that will never complete), then close."""
        for worker in self.workers:
            worker.abandon()
        self.close()

    # A script call (generate, chat): when the other ranks run the script too, send them its result (or its
    # error) when the outermost such call ends.
    def _script_started(self) -> None:
        self._call_depth += 1

    def _script_ended(self, script: ScriptCall, error: BaseException | None) -> None:
        self._call_depth -= 1
        if self.scripts_on_every_rank and self._call_depth == 0:
            self._end_call(("result", script.result) if error is None else ("error", error))

    def _end_call(self, message) -> None:
        if not self._finalizer.alive:
            return  # closed by the failure itself: the other ranks see that instead
        try:
            pickle.dumps(message[1])
        except Exception:  # an unpicklable result or error: the other ranks still learn how the call ended
            message = ("error", TensorParallelError(f"rank 0's call ended with {message[1]!r}, which cannot be sent"))
        if message[0] == "error" and not isinstance(message[1], Exception):  # Ctrl-C and the like on rank 0
            message = ("error", TensorParallelError(f"rank 0's call was interrupted ({message[1]!r})"))
        try:
            self._send_all(message)
        except OSError:
            pass  # a rank is gone: the next call says so

    def close(self) -> None:
        self._finalizer()


def spawn_tensor_parallel(directory: Path, compile_config: CompileConfig, model_config: ModelConfig) -> TensorParallelExecutor:
    """This process is rank 0 and starts the other tensor_parallel_size - 1 ranks on this host."""
    distributed.ensure_no_process_group()  # before any worker starts: the living model's group stays whole
    port = distributed.free_port()
    workers = [
        WorkerProcess(worker_main, dict(directory=str(directory), compile_config=compile_config.to_dict(),
                                     model_config=model_config.to_dict(), rank=rank, port=port),
                      name=f"tensor-parallel worker rank {rank}")
        for rank in range(1, compile_config.tensor_parallel_size)
    ]

    def load_local() -> ModelRunner:
        distributed.init_process_group(0, compile_config.tensor_parallel_size, port, compile_config.device)
        return load_rank_runner(directory, compile_config, model_config, rank=0)

    return TensorParallelExecutor(directory, workers, load_local, scripts_on_every_rank=False)


def worker_main(conn: Connection) -> None:
    job = conn.recv()
    config = CompileConfig.from_dict(job["compile_config"])
    rank = job["rank"]
    try:
        distributed.init_process_group(rank, config.tensor_parallel_size, job["port"], config.device)
        runner = load_rank_runner(Path(job["directory"]), config, ModelConfig.from_dict(job["model_config"]), rank)
    except BaseException as err:
        conn.send(("error", repr(err)))
        return
    conn.send(("ready", None))
    try:
        while follow_calls(conn, runner, rank)[0] not in ("stop", GONE):
            pass
    except TensorParallelError as err:  # rank 0 sees the same failure and drops this worker
        logger.warning("%s", err)
    distributed.destroy_process_group()
