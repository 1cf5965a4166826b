"""The async front of the engine: one thread owns the LLMEngine and steps it; the event loop hands it
adds and aborts through a queue and reads each request's outputs from that request's own stream.

Only the engine thread touches the LLMEngine (its scheduler, block manager and detokenizers are not
thread-safe). Requests that arrive while a step runs are added before the next one, so they join the
running batch between steps; an abort likewise takes effect, and frees its KV blocks, before the next step.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass

from ..runtime import compute_thread
from .llm_engine import LLMEngine
from .outputs import RequestOutput
from .sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class RequestAbortedError(Exception):
    """The request left the engine before it finished (aborted, or the engine stopped)."""


class EngineStoppedError(RequestAbortedError):
    """The engine is shutting down and takes no more requests."""


class EngineStepError(RuntimeError):
    """An engine step raised; every request in the engine at that moment was aborted."""


class EngineObserver:
    """What the engine thread reports as it runs; the server's metrics implement it. Called on the engine
    thread, so implementations must be thread-safe (prometheus_client metrics are)."""

    def step_finished(self, seconds: float) -> None:
        pass

    def first_token(self, seconds_since_arrival: float) -> None:
        pass

    def prompt_tokens(self, count: int) -> None:
        pass

    def generation_tokens(self, count: int) -> None:
        pass

    def request_finished(self, output: RequestOutput) -> None:
        pass


class RequestStream:
    """One request's outputs in order, read on the event loop. Each item is a full RequestOutput snapshot
    (cumulative text and tokens); the last one has finished=True, or the stream raises RequestAbortedError."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.ended = False  # its last item was delivered: no longer counted as unfinished
        self.finished = False
        self._items: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException) -> None:
        self._items.put_nowait(item)

    def __aiter__(self):
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._items.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item


@dataclass
class _Add:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    stream: RequestStream
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: str


class _Stop:
    pass


@dataclass
class _Tracked:
    """Engine-thread bookkeeping for one request in the engine."""
    stream: RequestStream
    num_tokens_seen: int = 0
    first_token_seen: bool = False


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, observer: EngineObserver | None = None):
        self._engine = engine  # touched by the engine thread only, once start() has run
        self._observer = observer or EngineObserver()
        # Immutable limits, read here once so the event loop never has to ask the engine.
        self.max_model_len = engine.config.max_model_len
        self.max_num_seqs = engine.config.max_num_seqs
        self.vocab_size = engine.vocab_size
        self.stats: dict = engine.get_stats()  # replaced (never mutated) by the engine thread after each step
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._tracked: dict[str, _Tracked] = {}  # engine thread only
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Event loop only: requests added and not yet ended, running or waiting for a slot.
        self.num_unfinished_requests = 0

    # ---- event loop side ----
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the engine thread. From here on the model computes on it alone: this thread (which loaded the
        model, or ran it) gives up its OpenMP pool, which would otherwise throttle the engine thread's
        (runtime/compute_thread.py: the server ran at 0.3x the engine's speed)."""
        self._loop = loop
        compute_thread.hand_over()
        self._thread = threading.Thread(target=self._run, name="bucketserve-engine", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    async def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                          params: SamplingParams) -> RequestStream:
        """Queue a request for the engine thread; returns its stream once the engine has accepted it.
        Raises ValueError if the engine rejects it, EngineStoppedError once shutdown has begun."""
        if not self.is_running:
            raise EngineStoppedError("the engine is shutting down; retry on another server")
        stream = RequestStream(request_id)
        accepted = self._loop.create_future()
        self.num_unfinished_requests += 1
        self._commands.put(_Add(request_id, prompt, list(prompt_token_ids), params, stream, accepted))
        try:
            await accepted
        except BaseException:
            self.abort(request_id)  # cancelled while queued: make sure it never runs
            raise
        return stream

    def abort(self, request_id: str) -> None:
        """Remove a request from the engine before its next step (a no-op once it finished)."""
        self._commands.put(_Abort(request_id))

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """Abort what is left, let the engine thread finish its step and exit."""
        self._stopping = True
        self._commands.put(_Stop())
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout_s)
            if self._thread.is_alive():
                logger.warning("the engine thread did not stop within %.0f s", timeout_s)

    def _deliver(self, deliveries: list[tuple[RequestStream, RequestOutput | BaseException]]) -> None:
        for stream, item in deliveries:
            if not stream.ended and (isinstance(item, BaseException) or item.finished):
                stream.ended = True
                self.num_unfinished_requests -= 1
            stream.put(item)

    # ---- engine thread side ----
    def _run(self) -> None:
        logger.info("engine thread started")
        try:
            self._serve_commands_and_step()
        except BaseException as error:  # a bug here must not leave callers waiting forever
            logger.exception("the engine thread failed")
            self._stopping = True
            self._end_all(EngineStepError(f"the engine thread failed: {error!r}"))
            self._refuse_queued([])
        finally:
            self.stats = self._engine.get_stats()
            logger.info("engine thread stopped")

    def _serve_commands_and_step(self) -> None:
        while True:
            commands = self._take_commands(block=not self._tracked)
            for position, command in enumerate(commands):
                if isinstance(command, _Stop):
                    self._end_all(EngineStoppedError("the server is shutting down"))
                    self._refuse_queued(commands[position + 1:])
                    return
                self._apply(command)
            if self._tracked:
                self._step()
            self.stats = self._engine.get_stats()

    def _take_commands(self, block: bool) -> list:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: _Add | _Abort) -> None:
        if isinstance(command, _Abort):
            tracked = self._tracked.pop(command.request_id, None)
            self._engine.abort_request(command.request_id)
            if tracked is not None:
                self._send([(tracked.stream, RequestAbortedError(f"request {command.request_id} was aborted"))])
            return
        try:
            self._engine.add_request(command.request_id, command.prompt, command.prompt_token_ids, command.params)
        except Exception as error:  # a bad request must not stop the loop: hand the error back to its caller
            self._send([(command.stream, error)])
            self._resolve(command.accepted, error)
            return
        self._tracked[command.request_id] = _Tracked(command.stream)
        self._observer.prompt_tokens(len(command.prompt_token_ids))
        self._resolve(command.accepted, None)

    def _step(self) -> None:
        started = time.perf_counter()
        try:
            outputs = self._engine.step(streaming=True)
        except Exception as error:
            logger.exception("engine step failed; aborting the %d requests in it", len(self._tracked))
            self._end_all(EngineStepError(f"the engine step failed: {error!r}"))
            return
        self._observer.step_finished(time.perf_counter() - started)
        deliveries = []
        for output in outputs:
            tracked = self._tracked.get(output.request_id)
            if tracked is None:
                continue
            num_tokens = sum(len(completion.token_ids) for completion in output.outputs)
            self._observer.generation_tokens(num_tokens - tracked.num_tokens_seen)
            tracked.num_tokens_seen = num_tokens
            metrics = output.metrics
            if not tracked.first_token_seen and metrics is not None and metrics.first_token_time is not None:
                tracked.first_token_seen = True
                self._observer.first_token(metrics.first_token_time - metrics.arrival_time)
            deliveries.append((tracked.stream, output))
            if output.finished:
                del self._tracked[output.request_id]
                self._observer.request_finished(output)
        self._send(deliveries)

    def _end_all(self, error: Exception) -> None:
        deliveries = []
        for request_id, tracked in self._tracked.items():
            try:
                self._engine.abort_request(request_id)
            except Exception:  # the engine may be inconsistent after a failed step; free what we can
                logger.exception("aborting request %s failed", request_id)
            deliveries.append((tracked.stream, error))
        self._tracked.clear()
        self._send(deliveries)

    def _refuse_queued(self, unapplied: list) -> None:
        """Adds queued behind a stop never reach the engine; tell their callers."""
        for command in unapplied + self._take_commands(block=False):
            if isinstance(command, _Add):
                stopped = EngineStoppedError("the server is shutting down")
                self._send([(command.stream, stopped)])
                self._resolve(command.accepted, stopped)

    def _send(self, deliveries: list) -> None:
        if deliveries:
            self._call_on_loop(self._deliver, deliveries)

    def _resolve(self, future: asyncio.Future, error: Exception | None) -> None:
        def resolve() -> None:
            if future.done():  # the caller was cancelled meanwhile
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._call_on_loop(resolve)

    def _call_on_loop(self, callback, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: nobody is left to read the result
            pass
