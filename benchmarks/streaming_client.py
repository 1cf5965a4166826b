"""The one client every served system is driven with: `users` concurrent users, each sending its requests one
after another to POST /v1/chat/completions with stream=True (greedy, ignore_eos, max_tokens), as an OpenAI client
does. Measured per run: output tokens/s over the whole run, time to first token and inter-token latency.

Tokens are counted from the usage the server sends last (stream_options.include_usage); the gaps between
streamed content chunks are the inter-token latencies (a chunk may carry more than one token: the latency per
token is then the chunk's gap over its tokens, which the usage count lets us spread evenly).
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time

REQUEST_TIMEOUT_S = 600.0


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _one(client, model: str, messages: list[dict], max_tokens: int) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    arrivals, usage = [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")[:300]
            raise RuntimeError(f"POST /v1/chat/completions answered {response.status_code}: {text}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices", [])):
                arrivals.append(time.perf_counter())
    ended = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else len(arrivals)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    return {"seconds": ended - started, "ttft_seconds": (arrivals[0] - started) if arrivals else None,
            "output_tokens": tokens, "chunks": len(arrivals), "gaps": gaps,
            "prompt_tokens": usage["prompt_tokens"] if usage else None}


async def _drive(base_url: str, model: str, conversations: list[list[dict]], users: int, requests_per_user: int,
                 max_tokens: int) -> tuple[float, list[dict]]:
    import httpx

    limits = httpx.Limits(max_connections=users + 1, max_keepalive_connections=users + 1)
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        async def user(index: int) -> list[dict]:
            done = []
            for turn in range(requests_per_user):
                messages = conversations[(index * requests_per_user + turn) % len(conversations)]
                done.append(await _one(client, model, messages, max_tokens))
            return done

        started = time.perf_counter()
        per_user = await asyncio.gather(*(user(i) for i in range(users)))
        return time.perf_counter() - started, [r for done in per_user for r in done]


def drive(base_url: str, model: str, conversations: list[list[dict]], users: int, requests_per_user: int,
          max_tokens: int) -> dict:
    """One run: users x requests_per_user streamed chat completions; its figures (seconds, tokens/s, TTFT and
    inter-token latency percentiles in seconds)."""
    if users < 1 or requests_per_user < 1:
        raise ValueError(f"users and requests per user must be >= 1, got {users} and {requests_per_user}")
    seconds, requests = asyncio.run(_drive(base_url, model, conversations, users, requests_per_user, max_tokens))
    output_tokens = sum(r["output_tokens"] for r in requests)
    ttft = [r["ttft_seconds"] for r in requests if r["ttft_seconds"] is not None]
    # One latency per token after the first: a chunk's gap spread over the tokens it carried.
    itl = []
    for r in requests:
        per_chunk = (r["output_tokens"] - 1) / len(r["gaps"]) if r["gaps"] else 0
        itl += [gap / per_chunk for gap in r["gaps"]] if per_chunk >= 1 else r["gaps"]
    return {"users": users, "requests": len(requests), "seconds": seconds, "output_tokens": output_tokens,
            "output_tokens_per_second": output_tokens / seconds,
            "ttft_seconds": {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99)},
            "inter_token_seconds": {"p50": percentile(itl, 50), "p99": percentile(itl, 99),
                                    "mean": statistics.fmean(itl) if itl else None},
            "prompt_tokens": [r["prompt_tokens"] for r in requests[:1]][0]}
