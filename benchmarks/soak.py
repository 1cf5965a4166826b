"""The soak: many requests through the OpenAI server on loopback, with shared and unshared prompt prefixes,
some cancelled mid-stream and some whose client disconnects; afterwards no KV block may still be held
(every block free or cached) and the server must still answer.

`bucketserve bench --soak` runs it at full scale; tests/test_prefix_cache.py at a small one.
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
import time
from pathlib import Path

# What each request does, in turn: three kinds share a system prompt (a prefix-cache hit once it is cached).
KINDS = ("shared", "shared-stream", "unshared", "cancel-mid-stream", "shared", "disconnect")
SHARED_PREFIX_TOKENS = 48
IDLE_TIMEOUT_S = 30.0


@contextlib.contextmanager
def serve_in_thread(model_dir: str | Path, **context_options):
    """The OpenAI server over model_dir on a free loopback port, in a thread; yields (base_url, ctx)."""
    import uvicorn

    from bucketserve.entrypoints.openai.server import build_app, load_server_context

    ctx = load_server_context(model_dir, served_model_name="soak", **context_options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(ctx), log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the soak's server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", ctx
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def soak_prompts(count: int, vocab_size: int, max_prompt_tokens: int, seed: int = 0) -> list[list[int]]:
    """Token-id prompts: the shared kinds start with one of two system prompts, the others do not."""
    rng = random.Random(seed)
    first = min(16, vocab_size - 1)  # past the special tokens of the demo's tokenizer
    systems = [[rng.randrange(first, vocab_size) for _ in range(SHARED_PREFIX_TOKENS)] for _ in range(2)]
    prompts = []
    for i in range(count):
        tail = [rng.randrange(first, vocab_size) for _ in range(rng.randrange(1, 24))]
        prefix = systems[i % 2] if KINDS[i % len(KINDS)].startswith(("shared", "cancel")) else []
        prompts.append((prefix + tail)[:max_prompt_tokens])
    return prompts


async def _one(client, index: int, prompt: list[int], rng: random.Random, max_model_len: int) -> str:
    """One request of its kind; returns what happened to it."""
    import httpx

    kind = KINDS[index % len(KINDS)]
    room = max_model_len - len(prompt)  # prompts take at most half the context (soak_prompts' cap)
    body = {"model": "soak", "prompt": prompt, "max_tokens": rng.randrange(2, min(24, room)), "temperature": 0.7, "seed": index}
    if kind in ("shared-stream", "cancel-mid-stream"):
        async with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as response:
            if response.status_code != 200:
                return f"status {response.status_code}"
            chunks = 0
            async for line in response.aiter_lines():
                chunks += line.startswith("data: ")
                if kind == "cancel-mid-stream" and chunks == 2:
                    return "cancelled"  # leaving the block closes the connection mid-stream
            return "completed"
    if kind == "disconnect":
        try:  # the client gives up long before the answer could come
            await client.post("/v1/completions", json=dict(body, max_tokens=min(64, room), ignore_eos=True), timeout=0.05)
        except httpx.TimeoutException:
            return "disconnected"
        return "completed"
    response = await client.post("/v1/completions", json=body)
    return "completed" if response.status_code == 200 else f"status {response.status_code}"


async def _drive(base_url: str, prompts: list[list[int]], concurrency: int, deadline: float, seed: int,
                 max_model_len: int) -> dict:
    import httpx

    outcomes: dict[str, int] = {}
    queue = list(enumerate(prompts))
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        async def worker():
            while queue and time.monotonic() < deadline:
                index, prompt = queue.pop(0)
                try:
                    outcome = await _one(client, index, prompt, rng, max_model_len)
                except httpx.HTTPError as error:
                    outcome = f"error {type(error).__name__}"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    outcomes["not started (time limit)"] = len(queue)
    return outcomes


def wait_until_idle(ctx, timeout_s: float = IDLE_TIMEOUT_S) -> dict:
    """The engine's stats once nothing runs or waits (aborts of disconnected clients land a step later)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = ctx.engine.stats
        if (stats["num_running"] == stats["num_waiting"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


def run_soak(model_dir: str | Path, requests: int, concurrency: int = 16, time_limit_s: float = 600.0,
             seed: int = 0, **context_options) -> dict:
    """Soak the server over model_dir; returns outcomes, the engine's stats afterwards and whether it held."""
    import httpx

    started = time.monotonic()
    with serve_in_thread(model_dir, **context_options) as (base_url, ctx):
        prompts = soak_prompts(requests, ctx.vocab_size, ctx.max_model_len // 2, seed)
        outcomes = asyncio.run(_drive(base_url, prompts, concurrency, started + time_limit_s, seed, ctx.max_model_len))
        stats = wait_until_idle(ctx)
        answer = httpx.post(base_url + "/v1/completions", json={"model": "soak", "prompt": prompts[0], "max_tokens": 4},
                            timeout=60)
        after = ctx.engine.stats
    return {
        "requests": requests, "concurrency": concurrency, "seconds": time.monotonic() - started, "outcomes": outcomes,
        "stats_after": stats, "held_blocks_after": stats["held_blocks"],
        "no_block_leaked": stats["held_blocks"] == 0 and stats["free_blocks"] == stats["usable_blocks"],
        "still_answers": answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0,
        "prefix_cache_hits": after["prefix_cache_hits"], "prefix_cache_queries": after["prefix_cache_queries"],
    }
