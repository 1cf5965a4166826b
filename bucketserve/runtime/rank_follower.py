"""Ranks other than 0: run rank 0's calls in the order it sends them, so the all-reduces inside the graphs meet.

Rank 0 sends ("call", (method, args)) before running each call itself: any ModelRunner method, by name. A rank launched by torchrun also
runs the user's script, so rank 0 ends each of the script's calls (LLM.generate, LLM.chat, model.generate)
with ("result", value) or ("error", exception), which that rank's same call returns or raises; ("stop", None)
ends the model (rank 0 closed it).
"""
from __future__ import annotations

import logging
import weakref
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import distributed
from .executor import Executor, ScriptCall, TensorParallelError
from .model_runner import ModelRunner

logger = logging.getLogger(__name__)
GONE = "gone"  # rank 0 closed the connection: its process ended, or its host stopped answering


def follow_calls(conn: Connection, runner: ModelRunner, rank: int) -> tuple[str, Any]:
    """Run rank 0's calls until it sends anything else; returns that message, or (GONE, None)."""
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return GONE, None
        if kind != "call":
            return kind, payload
        method, args = payload
        try:
            getattr(runner, method)(*args)
        except (ValueError, TypeError) as err:  # a bad request: every rank refuses it alike, before any collective
            logger.debug("rank %d: %s refused: %s", rank, method, err)
        except Exception as err:  # a collective failed: a rank died, or a host did not answer within the timeout
            raise TensorParallelError(
                f"rank {rank}: {method} failed together with the other ranks ({err}); a rank died or its host "
                f"became unreachable. This model cannot run any more: create a new LLM / model"
            ) from err


class FollowerExecutor(Executor):
    """A launched rank other than 0: its own shard's graphs, run only when rank 0 says so."""

    runs_script_calls = False

    def __init__(self, directory: Path, local: ModelRunner, conn: Connection, rank: int):
        super().__init__(directory, local)
        self.conn = conn
        self.rank = rank
        self._stopped = [False]  # shared with the finalizer, which must not hold self
        self._finalizer = weakref.finalize(self, _close_following, local, conn, rank, self._stopped)

    def _script_ended(self, script: ScriptCall, error: BaseException | None) -> None:
        """The script's call on this rank (its body did not run): run rank 0's graph calls until rank 0 ends the
        same call, and return rank 0's result (or raise its error)."""
        if error is not None:
            return
        kind, payload = self._follow()
        if kind == "result":
            script.result = payload
            return
        if kind == "error":
            raise payload
        raise TensorParallelError(
            f"rank {self.rank}: rank 0 {'closed the model' if kind == 'stop' else 'went away'} before it ended the call "
            f"this rank is waiting on; every rank must make the same generate / chat calls in the same order"
        )

    def follow(self) -> None:
        """Run rank 0's calls until rank 0 closes the model (or exits); results of rank 0's own calls are skipped."""
        while self._follow()[0] not in ("stop", GONE):
            pass

    def _follow(self) -> tuple[str, Any]:
        if not self._finalizer.alive:
            raise TensorParallelError(f"rank {self.rank}: this tensor-parallel model was closed; create a new one")
        try:
            kind, payload = follow_calls(self.conn, self.driver, self.rank)
        except BaseException:
            self._stopped[0] = True
            self.close()
            raise
        if kind in ("stop", GONE):
            self._stopped[0] = True
            self.close()
        return kind, payload

    def call(self, method: str, *args):
        raise TensorParallelError(
            f"rank {self.rank} runs {method} only when rank 0 does: call generate / chat on every rank (each returns "
            f"rank 0's outputs), or follow() to run rank 0's calls until it closes the model"
        )

    def close(self) -> None:
        self._finalizer()


def _close_following(local: ModelRunner, conn: Connection, rank: int, stopped: list[bool]) -> None:
    """Closing a following rank (the script's end, or garbage collection): first run rank 0's calls until rank 0
    closes too, since rank 0 may still be running calls (the last outputs, or calls its script makes on rank 0
    alone); then leave the group."""
    try:
        while not stopped[0]:
            stopped[0] = follow_calls(conn, local, rank)[0] in ("stop", GONE)
    except TensorParallelError as err:
        logger.warning("%s", err)
    finally:
        conn.close()
        distributed.destroy_process_group()
