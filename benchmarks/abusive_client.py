"""Normal clients' latency with and without one abusive client beside them, on the tiny random model.

    python -m benchmarks.abusive_client [--clients 4] [--requests 50] [--abuse-mb 3]

Builds a tiny random Llama, compiles it eagerly (seconds), starts `bucketserve serve` on 127.0.0.1 and runs
`--clients` normal clients, each sending `--requests` short completions (8 tokens) one after another, twice: alone,
then beside one client (a process of its own) that sends `--abuse-mb` MB text prompts back to back, then alone
again (the spread between the two quiet runs is the noise). Prints the normal clients' p50 / p90 / p99 latency
for each run and what the abuser got back. The counts are bounded, so a run takes
about a minute; the machine's other load shows up as noise, so compare the two runs of one invocation.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

NORMAL_BODY = {"prompt": "The weather today is", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


def build_model(root: Path) -> Path:
    from bucketserve import AutoModelForCausalLM
    from bucketserve.demo.checkpoint import build_random_checkpoint

    checkpoint = build_random_checkpoint(root / "checkpoint", shape="tiny", model_type="llama")
    compiled = root / "compiled"
    AutoModelForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", batch_size=8, max_seq_len=256,
                                         decoder_batch_sizes=[8, 4, 1]).save_pretrained(compiled)
    return compiled


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(compiled: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "bucketserve.entrypoints.cli", "serve", str(compiled), "--port", str(port),
               "--served-model-name", "tiny", "--log-level", "warning"]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)


async def normal_client(client: httpx.AsyncClient, requests: int, latencies: list[float]) -> None:
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.post("/v1/completions", json={"model": "tiny", **NORMAL_BODY})
        response.raise_for_status()
        latencies.append(time.perf_counter() - started)


def abuser(base_url: str, prompt: str, counts) -> None:
    """Big prompts back to back, in a process of its own: encoding megabytes of JSON would otherwise stall the
    normal clients' own event loop and count against the server."""
    import json

    body = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 1}).encode()
    with httpx.Client(base_url=base_url, timeout=300) as client:
        while True:
            status = client.post("/v1/completions", content=body, headers={"content-type": "application/json"}).status_code
            with counts.get_lock():
                counts[{400: 0, 413: 1}.get(status, 2)] += 1


async def run(base_url: str, clients: int, requests: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        await asyncio.gather(*(normal_client(client, requests, latencies) for _ in range(clients)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=50, help="per normal client, per run")
    parser.add_argument("--abuse-mb", type=float, default=3.0, help="size of each abusive text prompt")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bucketserve-abusive-") as work:
        root = Path(work)
        print("building and compiling the tiny model (eager) ...", flush=True)
        compiled = build_model(root)
        port = free_port()
        server = start_server(compiled, port, root / "serve.log")
        base_url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(run(base_url, args.clients, 5))  # warm-up
            alone = asyncio.run(run(base_url, args.clients, args.requests))
            prompt = "many words in a very long prompt " * int(args.abuse_mb * (1 << 20) / 33)
            counts = multiprocessing.Array("i", 3)
            abusing = multiprocessing.Process(target=abuser, args=(base_url, prompt, counts), daemon=True)
            abusing.start()
            time.sleep(1.0)  # the abuser's first prompts are in by now
            beside = asyncio.run(run(base_url, args.clients, args.requests))
            abusing.terminate()
            abusing.join()
            again = asyncio.run(run(base_url, args.clients, args.requests))  # the noise between two quiet runs
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"normal clients: {args.clients} x {args.requests} completions of {NORMAL_BODY['max_tokens']} tokens")
    runs = (("alone", alone), (f"beside one client sending {args.abuse_mb:g} MB prompts", beside), ("alone again", again))
    for name, latencies in runs:
        print(f"  {name}: p50 {percentile(latencies, 50) * 1000:.0f} ms, p90 {percentile(latencies, 90) * 1000:.0f} ms, "
              f"p99 {percentile(latencies, 99) * 1000:.0f} ms")
    print(f"  the abuser's requests got: 400 x {counts[0]}, 413 x {counts[1]}, other x {counts[2]}")
    print(f"  (bucketserve from {os.path.dirname(sys.modules['bucketserve'].__file__)})")


if __name__ == "__main__":
    main()
