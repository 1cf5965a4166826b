"""Helper processes started as fresh interpreters, talking over a socket pair.

Not multiprocessing's spawn: that re-imports the user's main script in every child, which breaks scripts
without an `if __name__ == "__main__":` guard, such as the seed's. A child whose parent dies sees its socket
close and exits.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection

ENTRY_MODULE = "bucketserve.runtime.worker_entry"


class WorkerProcess:
    def __init__(self, target: Callable[[Connection], None], payload: dict, name: str, env: dict[str, str] | None = None):
        """Run target(connection) in a new interpreter; target must be a module-level function. env: variables
        set in the child on top of this process's environment."""
        parent_end, child_end = socket.socketpair()
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", ENTRY_MODULE, f"{target.__module__}:{target.__name__}", str(child_end.fileno())],
            pass_fds=[child_end.fileno()],
            env={**os.environ, **(env or {})},
        )
        child_end.close()
        self.conn = Connection(parent_end.detach())
        self.conn.send(payload)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.poll()

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def exit_description(self) -> str:
        return f"(pid {self.pid}) exited with code {self.exitcode}"

    def abandon(self) -> None:
        """Kill it: it may wait in a collective that will never complete."""
        self.process.kill()

    def stop(self, timeout: float) -> None:
        try:
            self.conn.send(("stop", None))
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.conn.close()
