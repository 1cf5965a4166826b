"""Servers the benchmark starts as subprocesses on 127.0.0.1 (bucketserve serve, llama-server): each started in
a `with`, waited on until its /health answers, and stopped (terminated, then killed) when the block ends,
whatever happened inside it. Their output goes to a log file in the out dir."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_TIMEOUT_S = 300.0  # loading a compiled directory on a loaded machine takes a while
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bucketserve_command(directory: Path, port: int, served_model_name: str) -> list[str]:
    """`bucketserve serve` as a user runs it, through this interpreter."""
    return [sys.executable, "-m", "bucketserve.entrypoints.cli", "serve", str(directory), "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", served_model_name, "--log-level", "warning"]


def thread_env(threads: int) -> dict:
    """The environment a server runs with: `threads` OpenMP threads (torch's and the kernels' pool)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads))


@contextlib.contextmanager
def running(name: str, command: list[str], port: int, log_path: Path, env: dict | None = None):
    """Starts `command`, yields its base URL once GET /health answers 200, and always stops it."""
    import httpx

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited {process.returncode} before it answered /health; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer /health within {READY_TIMEOUT_S:.0f} s; see {log_path}")
                try:
                    if httpx.get(base_url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            yield base_url
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
