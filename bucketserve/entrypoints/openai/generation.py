"""Running one HTTP request's prompts through the async engine: start them all or none, follow their
outputs (merged, in arrival order), and abort whatever is unfinished when the client goes away."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ...engine.async_engine import EngineStepError, EngineStoppedError, RequestAbortedError, RequestStream
from ...engine.outputs import RequestOutput
from ...engine.sampling_params import SamplingParams
from .context import ServerContext
from .errors import OpenAIError, bad_request
from .prompt_tokens import Prompt

T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before the response was ready."""


async def start_requests(ctx: ServerContext, request_id: str, prompts: list[Prompt],
                         params: list[SamplingParams]) -> list[RequestStream]:
    """Add one engine request per prompt; if any is refused, abort the ones already added."""
    ctx.check_capacity(len(prompts))
    streams: list[RequestStream] = []
    try:
        for index, (prompt, prompt_params) in enumerate(zip(prompts, params, strict=True)):
            streams.append(await ctx.engine.add_request(f"{request_id}-{index}", prompt.text, prompt.token_ids, prompt_params))
    except ValueError as error:
        abort_unfinished(ctx, streams)
        raise bad_request(str(error), param="prompt") from error
    except EngineStoppedError as error:
        abort_unfinished(ctx, streams)
        raise OpenAIError(503, str(error)) from error
    except BaseException:
        abort_unfinished(ctx, streams)
        raise
    return streams


def abort_unfinished(ctx: ServerContext, streams: list[RequestStream]) -> None:
    for stream in streams:
        if not stream.finished:
            ctx.engine.abort(stream.request_id)


async def follow(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """(prompt index, output) as each engine request advances, until all have finished."""
    if len(streams) == 1:
        async for output in streams[0]:
            yield 0, output
        return
    merged: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(index: int, stream: RequestStream) -> None:
        try:
            async for output in stream:
                merged.put_nowait((index, output))
        except BaseException as error:
            merged.put_nowait((index, error))
        finally:
            merged.put_nowait((index, done))

    tasks = [asyncio.ensure_future(pump(index, stream)) for index, stream in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            index, item = await merged.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def final_outputs(streams: list[RequestStream]) -> list[RequestOutput]:
    last: dict[int, RequestOutput] = {}
    async for index, output in follow(streams):
        last[index] = output
    return [last[index] for index in range(len(streams))]


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await work unless the client disconnects first; then cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let its finally blocks run before anyone looks at it
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (or never comes).
    while (await request.receive())["type"] != "http.disconnect":
        pass


# What a request can meet once it is in the engine: it was aborted, the server stopped, or a step failed.
ENGINE_ERRORS = (RequestAbortedError, EngineStepError)


def engine_error(error: Exception) -> OpenAIError:
    """What to tell a client whose request left the engine early."""
    if isinstance(error, EngineStoppedError):
        return OpenAIError(503, f"{error}; retry on another server")
    if isinstance(error, EngineStepError):
        return OpenAIError(500, str(error))
    if isinstance(error, RequestAbortedError):
        return OpenAIError(503, str(error))
    return OpenAIError(500, f"internal server error: {error!r}")


async def await_final_outputs(ctx: ServerContext, request: Request, streams: list[RequestStream]) -> list[RequestOutput] | Response:
    """Every stream's finished output, or the response to send instead (client gone, engine error).

    Whatever happens, nothing of these requests is left running in the engine."""
    try:
        return await until_disconnect(request, final_outputs(streams))
    except ClientDisconnected:
        return Response(status_code=499)  # nobody reads it
    except ENGINE_ERRORS as error:
        return engine_error(error).response()
    finally:
        abort_unfinished(ctx, streams)
