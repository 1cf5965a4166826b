"""Ranks other than 0: run rank 0's calls in the order it sends them, so the all-reduces inside the graphs meet.

Rank 0 sends ("prefill" | "prefill_batch" | "decode", args) before running each call itself. A rank launched by torchrun also
runs the user's script, so rank 0 ends each of the script's calls (LLM.generate, LLM.chat, model.generate)
with ("result", value) or ("error", exception), which that rank's same call returns or raises; ("stop", None)
ends the model (rank 0 closed it).
"""
from __future__ import annotations

import logging
import weakref
from multiprocessing.connection import Connection
from typing import Any

from . import distributed
from .around_local import AroundLocalRunner
from .model_runner import ModelRunner
from .tp_error import TensorParallelError

logger = logging.getLogger(__name__)
CALLS = ("prefill", "prefill_batch", "decode")  # TensorParallelRunner's calls that every rank runs
GONE = "gone"  # rank 0 closed the connection: its process ended, or its host stopped answering


def follow_calls(conn: Connection, runner: ModelRunner, rank: int) -> tuple[str, Any]:
    """Run rank 0's calls until it sends anything else; returns that message, or (GONE, None)."""
    while True:
        try:
            method, payload = conn.recv()
        except (EOFError, OSError):
            return GONE, None
        if method not in CALLS:
            return method, payload
        try:
            getattr(runner, method)(*payload)
        except (ValueError, TypeError) as err:  # a bad request: every rank refuses it alike, before any collective
            logger.debug("rank %d: %s refused: %s", rank, method, err)
        except Exception as err:  # a collective failed: a rank died, or a host did not answer within the timeout
            raise TensorParallelError(
                f"rank {rank}: {method} failed together with the other ranks ({err}); a rank died or its host "
                f"became unreachable. This model cannot run any more: create a new LLM / model"
            ) from err


class FollowerRunner(AroundLocalRunner):
    """A launched rank other than 0: its own shard's graphs, run only when rank 0 says so."""

    def __init__(self, local: ModelRunner, conn: Connection, rank: int):
        self.local = local
        self.conn = conn
        self.rank = rank
        self._stopped = [False]  # shared with the finalizer, which must not hold self
        self._finalizer = weakref.finalize(self, _close_following, local, conn, rank, self._stopped)

    def run_on_every_rank(self, call):
        """The script's call on this rank: run rank 0's graph calls until rank 0 ends the same call, and return
        rank 0's result (or raise its error). `call` itself does not run here."""
        kind, payload = self._follow()
        if kind == "result":
            return payload
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
            kind, payload = follow_calls(self.conn, self.local, self.rank)
        except BaseException:
            self._stopped[0] = True
            self.close()
            raise
        if kind in ("stop", GONE):
            self._stopped[0] = True
            self.close()
        return kind, payload

    def prefill(self, *args):
        raise self._not_here("prefill")

    def prefill_batch(self, *args):
        raise self._not_here("prefill_batch")

    def decode(self, *args):
        raise self._not_here("decode")

    def _not_here(self, method: str) -> TensorParallelError:
        return TensorParallelError(
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
