"""docs/SCALE_OUT.md's nginx example, run as it is (its three ports changed) in front of two tiny
`bucketserve serve` replicas on loopback: requests without a session reach both replicas, a session's
requests always reach the same one, and a stream passes through."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "nginx" / "bucketserve-replicas.conf"
START_TIMEOUT_S = 120


def find_nginx() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, processes: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        for process, log in zip(processes, logs, strict=True):
            assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "\n".join(log.read_text() for log in logs)
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def replicas(eager_dir, tmp_path):
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"replica{i}.log" for i in (0, 1)]
    processes = [subprocess.Popen([sys.executable, "-m", "bucketserve.entrypoints.cli", "serve", str(eager_dir),
                                   "--port", str(port), "--served-model-name", "tiny"],
                                  stdout=log.open("w"), stderr=subprocess.STDOUT)
                 for port, log in zip(ports, logs, strict=True)]
    try:
        for port in ports:
            wait_until_up(f"http://127.0.0.1:{port}/health", processes, logs)
        yield ports
    finally:
        for process in processes:
            stop(process)


@pytest.fixture
def nginx(replicas, tmp_path):
    binary = find_nginx()
    if binary is None:
        pytest.skip("nginx is not installed (Debian: apt-get install -y nginx-light); the scale-out example needs it")
    port = free_port()
    config = EXAMPLE.read_text()
    for placeholder, value in (("127.0.0.1:8001", f"127.0.0.1:{replicas[0]}"), ("127.0.0.1:8002", f"127.0.0.1:{replicas[1]}"),
                               ("listen 127.0.0.1:8080", f"listen 127.0.0.1:{port}")):
        assert placeholder in config
        config = config.replace(placeholder, value)
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(config)
    # Where its pid, logs and temporary files go, outside /etc and /var; as root, its workers stay root so they
    # can use this test's private directory.
    globals_ = f"daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log;"
    if os.geteuid() == 0:
        globals_ += " user root;"
    log = tmp_path / "nginx.log"
    process = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", globals_],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/health", [process], [log])
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process, signal.SIGQUIT)  # nginx's graceful stop


def complete(base: str, headers: dict[str, str] | None = None) -> str:
    body = {"model": "tiny", "prompt": "The river ran", "max_tokens": 2, "temperature": 0}
    reply = httpx.post(f"{base}/v1/completions", json=body, headers=headers or {}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] is not None
    return reply.headers["x-bucketserve-replica"]


def test_nginx_spreads_requests_over_both_replicas_and_keeps_a_session_on_one(nginx, replicas):
    both = {f"127.0.0.1:{port}" for port in replicas}
    assert {complete(nginx) for _ in range(8)} == both
    for session in ("alice", "bob", "carol"):
        served_by = {complete(nginx, {"X-Session-Id": session}) for _ in range(4)}
        assert len(served_by) == 1 and served_by <= both, (session, served_by)
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{nginx}/v1/chat/completions", json=body, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]" and len(events) >= 3
