"""`bucketserve serve` as a user runs it: a subprocess on a free loopback port over the eager tiny model,
with an API key, a served model name and a small waiting queue; then SIGTERM while a stream runs."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cli_server(eager_dir, tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    command = [sys.executable, "-m", "bucketserve.entrypoints.cli", "serve", str(eager_dir), "--port", str(port),
               "--served-model-name", "tiny-eager", "--max-waiting", "2", "--shutdown-timeout", "1"]
    with open(log_path, "w") as log:  # the key from the environment, as a deployment keeps it out of `ps`
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "BUCKETSERVE_API_KEY": API_KEY})
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, log_path.read_text()
        assert time.monotonic() < deadline, "server did not come up:\n" + log_path.read_text()
        try:
            if httpx.get(base_url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    yield process, base_url, log_path
    if process.poll() is None:
        process.kill()
        process.wait()


def test_api_key_is_required_on_v1_routes(cli_server):
    _, base_url, _ = cli_server
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        response = httpx.get(base_url + "/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    response = httpx.post(base_url + "/v1/completions", json={"prompt": "x"})
    assert response.status_code == 401
    models = httpx.get(base_url + "/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["tiny-eager"]
    completion = httpx.post(base_url + "/v1/completions", headers=AUTH,
                            json={"model": "tiny-eager", "prompt": "x", "max_tokens": 2})
    assert completion.status_code == 200 and completion.json()["model"] == "tiny-eager"


def test_api_key_from_the_environment_guards_the_tokenizer_routes_too(cli_server):
    process, base_url, _ = cli_server
    assert API_KEY not in " ".join(process.args)  # not on the command line
    for path, body in (("/tokenize", {"prompt": "hello"}), ("/detokenize", {"tokens": [5, 6]})):
        response = httpx.post(base_url + path, json=body)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
        assert httpx.post(base_url + path, json=body, headers=AUTH).status_code == 200, path
    for path in ("/health", "/metrics", "/version", "/tokenizer_info"):  # probes and scrapers carry no key
        assert httpx.get(base_url + path).status_code == 200, path


def test_requests_over_max_waiting_get_503(cli_server):
    _, base_url, _ = cli_server
    body = {"prompt": "Keep going", "max_tokens": 200, "ignore_eos": True}

    async def burst():
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json=body) for _ in range(16)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, statuses
    # The 8 running slots (batch_size 8) and the 2 places of --max-waiting 2 are all served.
    assert statuses.count(200) >= 10, statuses
    refused = next(r for r in responses if r.status_code == 503).json()["error"]
    assert refused["type"] == "service_unavailable_error" and "--max-waiting" in refused["message"]
    # Once the burst has drained, requests are admitted again.
    assert httpx.post(base_url + "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 2}).status_code == 200


def test_sigterm_ends_in_flight_streams_and_stops_the_engine_thread(cli_server):
    process, base_url, log_path = cli_server
    # 16 sequences x 200 tokens outlast --shutdown-timeout 1, so the stream is normally cut by the shutdown.
    body = {"prompt": "Keep going", "max_tokens": 200, "n": 16, "ignore_eos": True, "stream": True}
    lines = []
    with httpx.stream("POST", base_url + "/v1/completions", headers=AUTH, json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 4:
                process.send_signal(signal.SIGTERM)
    # Finished within --shutdown-timeout, or ended by the shutdown with an error event: either way, [DONE].
    events = [line for line in lines if line]
    assert events[-1] == "data: [DONE]"
    if "error" in events[-2]:
        assert "shutting down" in events[-2]
    # uvicorn drains, runs the app's shutdown (which stops the engine thread), then re-raises SIGTERM.
    assert process.wait(timeout=30) in (0, -signal.SIGTERM), log_path.read_text()
    log = log_path.read_text()
    assert "engine thread stopped" in log and "Application shutdown complete" in log, log
    assert log.index("engine thread stopped") < log.index("Application shutdown complete")
    assert "Traceback" not in log, log
