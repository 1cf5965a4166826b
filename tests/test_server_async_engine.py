"""AsyncLLMEngine on the eager tiny model: requests join a running batch between steps, aborts free their
blocks, bad prompts fail alone, shutdown ends every stream, and only the engine thread touches the engine."""
from __future__ import annotations

import asyncio
import threading

import pytest

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
