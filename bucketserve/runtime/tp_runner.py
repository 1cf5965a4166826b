"""Tensor parallelism at run time: this process is rank 0 and drives tensor_parallel_size - 1 workers.

Every prefill/decode call is sent to each worker first, then run here; the graphs' all-reduces keep the
ranks in step, so every rank runs the same decoder for a step. Only rank 0's logits are used. A call that
stops part-way (a worker died or hung, a collective failed, Ctrl-C) leaves the ranks out of step: the
runner then kills the workers and closes, and every later call is a clear error (never a result computed
from mismatched collectives), so a new model can be made.

Each worker rank runs worker_main in its own interpreter (see worker_process.py).
"""
from __future__ import annotations

import logging
import time
import weakref
from multiprocessing.connection import Connection
from pathlib import Path

from ..config import CompileConfig
from ..models.config import ModelConfig
from . import distributed
from .rank_loader import load_rank_runner
from .worker_process import WorkerProcess

logger = logging.getLogger(__name__)
READY_TIMEOUT_S = 600  # loading a rank's graphs and weights


class TensorParallelError(RuntimeError):
    """A tensor-parallel worker failed; this model can no longer run. Make a new one."""


def _shutdown(workers: list[WorkerProcess]) -> None:
    deadline = time.monotonic() + 10
    for worker in workers:
        worker.stop(timeout=max(0.0, deadline - time.monotonic()))
    distributed.destroy_process_group()


class TensorParallelRunner:
    def __init__(self, directory: Path, compile_config: CompileConfig, model_config: ModelConfig):
        distributed.ensure_no_process_group()  # before any worker starts: the living model's group stays whole
        port = distributed.free_port()
        self.workers = [
            WorkerProcess(worker_main, dict(directory=str(directory), compile_config=compile_config.to_dict(),
                                         model_config=model_config.to_dict(), rank=rank, port=port),
                          name=f"tensor-parallel worker rank {rank}")
            for rank in range(1, compile_config.tensor_parallel_size)
        ]
        self._finalizer = weakref.finalize(self, _shutdown, self.workers)
        try:
            distributed.init_process_group(0, compile_config.tensor_parallel_size, port, compile_config.device)
            self.local = load_rank_runner(directory, compile_config, model_config, rank=0)
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        for worker in self.workers:
            while not worker.conn.poll(0.2):
                self._check_workers_alive()
                if time.monotonic() > deadline:
                    raise TensorParallelError(f"{worker.name} did not load within {READY_TIMEOUT_S} s")
            status, detail = worker.conn.recv()
            if status != "ready":
                raise TensorParallelError(f"{worker.name} failed to load: {detail}")

    def _check_workers_alive(self) -> None:
        for worker in self.workers:
            if not worker.is_alive():
                raise TensorParallelError(
                    f"{worker.name} (pid {worker.pid}) exited with code {worker.exitcode}; this model cannot run "
                    f"any more: create a new LLM / model"
                )

    def _run_everywhere(self, method: str, *args):
        if not self._finalizer.alive:
            raise TensorParallelError("this tensor-parallel model was closed; create a new one")
        try:
            self._check_workers_alive()
            for worker in self.workers:
                worker.conn.send((method, args))
            return getattr(self.local, method)(*args)
        except (ValueError, TypeError):
            raise  # a bad request, refused by every rank alike before any collective: still in step
        except TensorParallelError:
            self.close()
            raise
        except BaseException as err:  # a collective failed or timed out, a worker died, or Ctrl-C: out of step
            self._abandon()
            if not isinstance(err, Exception):
                raise  # KeyboardInterrupt and the like go on up; the model is closed
            raise TensorParallelError(
                f"a tensor-parallel call failed during {method} ({err}); this model cannot run any more: "
                f"create a new LLM / model"
            ) from err

    def _abandon(self) -> None:
        """Kill the workers (they may wait in a collective that will never complete), then close."""
        for worker in self.workers:
            worker.process.kill()
        self.close()

    def prefill(self, *args):
        return self._run_everywhere("prefill", *args)

    def prefill_batch(self, *args):
        return self._run_everywhere("prefill_batch", *args)

    def decode(self, *args):
        return self._run_everywhere("decode", *args)

    def close(self) -> None:
        self._finalizer()

    def __getattr__(self, name):
        # Everything but prefill/prefill_batch/decode (config, counters, KV cache, compute_logits) is rank 0's.
        if name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)


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
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):  # rank 0 is gone
            break
        if method == "stop":
            break
        try:
            getattr(runner, method)(*args)
        except Exception as err:  # rank 0 raises the same error for a bad request; keep serving
            logger.warning("rank %d: %s failed: %r", rank, method, err)
    distributed.destroy_process_group()
