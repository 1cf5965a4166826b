"""AsyncLLMEngine on the eager tiny model: requests join a running batch between steps, aborts free their
blocks, bad prompts fail alone, shutdown ends every stream, and only the engine thread touches the engine."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading

import pytest
import torch

from bucketserve.engine.async_engine import AsyncLLMEngine, EngineStoppedError, RequestAbortedError
from bucketserve.engine.sampling_params import SamplingParams
from bucketserve.entrypoints.llm import LLM

LONG = SamplingParams(temperature=0, max_tokens=240, ignore_eos=True)  # long enough to outlast any test step


class ThreadRecordingEngine:
    """Wraps an LLMEngine and records which threads call its methods."""

    def __init__(self, engine):
        self._engine = engine
        self.calling_threads: set[str] = set()

    def __getattr__(self, name):
        value = getattr(self._engine, name)
        if not callable(value):
            return value

        def recorded(*args, **kwargs):
            self.calling_threads.add(threading.current_thread().name)
            return value(*args, **kwargs)

        return recorded


@pytest.fixture(scope="module")
def llm_engine(eager_dir):
    return LLM(model=str(eager_dir)).llm_engine


def run_with_engine(llm_engine, body):
    """Start an AsyncLLMEngine over llm_engine on a fresh loop, run body(engine), shut it down."""
    recording = ThreadRecordingEngine(llm_engine)
    engine = AsyncLLMEngine(recording)
    recording.calling_threads.clear()  # construction reads limits on this thread, before the engine thread exists

    async def main():
        engine.start(asyncio.get_running_loop())
        try:
            return await body(engine)
        finally:
            await engine.shutdown()

    result = asyncio.run(main())
    assert recording.calling_threads == {"bucketserve-engine"}
    assert not engine.is_running
    return result


def prompt(text: str, llm_engine) -> list[int]:
    return llm_engine.tokenizer.encode(text)


def test_a_request_added_later_joins_the_running_batch(llm_engine):
    async def body(engine):
        first = await engine.add_request("first", None, prompt("The first request", llm_engine), LONG)
        async for output in first:
            if len(output.outputs[0].token_ids) >= 3:
                break
        second = await engine.add_request("second", None, prompt("The second one", llm_engine),
                                          SamplingParams(temperature=0, max_tokens=5))
        async for output in second:  # noqa: B007 (the last output is what is checked)
            pass
        assert output.finished and len(output.outputs[0].token_ids) == 5
        # The second request ran while the first was still generating, i.e. in the same decode batches.
        first_progress = None
        async for first_progress in first:  # noqa: B007 (the last output is returned)
            pass
        return first_progress, engine

    before = dict(llm_engine.get_stats()["decode_steps_per_decoder"])
    first_final, engine = run_with_engine(llm_engine, body)
    stats = engine.stats  # published by the engine thread as it stopped
    assert first_final.finished and len(first_final.outputs[0].token_ids) == LONG.max_tokens
    assert stats["decode_steps_per_decoder"][4] > before[4]  # 2 running rows -> the 4-row decoder
    assert stats["free_blocks"] == stats["usable_blocks"]


def test_abort_frees_blocks_and_ends_the_stream(llm_engine):
    async def body(engine):
        stream = await engine.add_request("long", None, prompt("Abort me", llm_engine), LONG)
        await stream.__anext__()
        await stream.__anext__()
        engine.abort("long")
        with pytest.raises(RequestAbortedError):
            async for _ in stream:
                pass
        for _ in range(100):  # the engine thread publishes stats after applying the abort
            if engine.stats["num_running"] == 0:
                break
            await asyncio.sleep(0.01)
        return engine.stats

    stats = run_with_engine(llm_engine, body)
    assert stats["num_running"] == 0 and stats["free_blocks"] == stats["usable_blocks"]


def test_a_rejected_prompt_fails_alone(llm_engine):
    async def body(engine):
        good = await engine.add_request("good", None, prompt("Still fine", llm_engine), SamplingParams(max_tokens=3))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            await engine.add_request("bad", None, [engine.vocab_size + 5], SamplingParams(max_tokens=3))
        outputs = [output async for output in good]
        assert engine.num_unfinished_requests == 0
        return outputs[-1]

    assert len(run_with_engine(llm_engine, body).outputs[0].token_ids) == 3


def test_shutdown_ends_open_streams_and_refuses_new_requests(llm_engine):
    async def body(engine):
        stream = await engine.add_request("open", None, prompt("Never finishes", llm_engine), LONG)
        await stream.__anext__()
        await engine.shutdown()
        with pytest.raises(EngineStoppedError):
            async for _ in stream:
                pass
        with pytest.raises(EngineStoppedError):
            await engine.add_request("late", None, prompt("Too late", llm_engine), LONG)
        return engine

    engine = run_with_engine(llm_engine, body)
    assert engine.stats["free_blocks"] == engine.stats["usable_blocks"]


class StepThreadCounts:
    """Wraps an LLMEngine and records the OpenMP thread count each step runs with, and on which thread."""

    def __init__(self, engine):
        self._engine = engine
        self.seen: set[tuple[str, int]] = set()

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def step(self, *args, **kwargs):
        self.seen.add((threading.current_thread().name, torch.get_num_threads()))
        return self._engine.step(*args, **kwargs)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one CPU: every thread count is 1")
def test_the_engine_thread_computes_with_the_thread_count_set_where_the_model_was_handed_over(llm_engine):
    """OpenMP's thread count is per thread; the engine thread must see the one the process set (a tensor-parallel
    rank's share of the host, a benchmark's --threads), not one per CPU."""
    recording = StepThreadCounts(llm_engine)
    engine = AsyncLLMEngine(recording)
    threads_before = torch.get_num_threads()

    async def main():
        engine.start(asyncio.get_running_loop())
        try:
            stream = await engine.add_request("count", None, prompt("Count the threads", llm_engine),
                                              SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
            return [output async for output in stream][-1]
        finally:
            await engine.shutdown()

    torch.set_num_threads(1)
    try:
        final = asyncio.run(main())
    finally:
        torch.set_num_threads(threads_before)
    assert len(final.outputs[0].token_ids) == 4
    assert recording.seen == {("bucketserve-engine", 1)}


HAND_OVER_PROBE = """
import os, time, torch
from bucketserve.runtime import compute_thread

def threads():
    return len(os.listdir("/proc/self/task"))

torch.set_num_threads(2)
before = threads()
torch.ones(4_000_000).add_(1)  # a parallel region: this thread's OpenMP pool starts its worker
with_pool = threads()
released = compute_thread.hand_over()
deadline = time.time() + 10
while threads() > before and time.time() < deadline:  # the released worker exits on its own
    time.sleep(0.01)
print(before, with_pool, threads(), released)
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not os.path.isdir("/proc/self/task"),
                    reason="needs two CPUs (an OpenMP pool with a worker) and Linux's /proc")
def test_handing_over_releases_the_handing_threads_openmp_pool():
    """libgomp throttles every pool's spinning once all pools' workers outnumber the CPUs, so the thread that
    loaded the model must give its pool up when the engine thread takes over (the server ran at 0.3x)."""
    result = subprocess.run([sys.executable, "-c", HAND_OVER_PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    before, with_pool, after, released = map(int, result.stdout.split())
    assert with_pool == before + 1  # the pool's one worker (two threads: this one and the worker)
    assert after == before  # released
    assert released >= 1  # torch's libgomp
