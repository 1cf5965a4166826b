"""POST /v1/chat/completions: the messages go through the model's chat template into one engine request
with n choices; streamed as chat.completion.chunk events (role first, then content deltas, then the
finish reason, then, if asked, a usage chunk with no choices)."""
from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ...engine.outputs import CompletionOutput, RequestOutput
from .context import ServerContext
from .errors import bad_request
from .generation import ENGINE_ERRORS, abort_unfinished, await_final_outputs, engine_error, follow, start_requests
from .logprobs import chat_logprobs
from .prompt_tokens import chat_prompt, check_prompt
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    DeltaMessage,
    PromptTokensDetails,
    Usage,
    dump,
)
from .sampling import reject_unsupported, sampling_params
from .sse import DONE, EventStreamResponse, event


class ChatRun:
    """One chat request in flight: its prompt, options and the response pieces built from them."""

    def __init__(self, ctx: ServerContext, body: ChatCompletionRequest):
        self.ctx = ctx
        self.body = body
        reject_unsupported(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
        self.prompt = chat_prompt(ctx, body.messages, body.add_generation_prompt)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = check_prompt(ctx, self.prompt, max_tokens, param="messages")
        self.top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
        self.params = sampling_params(ctx, body, max_tokens, self.top_logprobs)
        self.request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = ctx.served_model_name

    def usage(self, output: RequestOutput | None) -> Usage:
        prompt_tokens = len(self.prompt.token_ids)
        completion_tokens = sum(len(c.token_ids) for c in output.outputs) if output is not None else 0
        cached_tokens = (output.num_cached_tokens or 0) if output is not None else 0
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))

    def logprobs(self, completion: CompletionOutput, sent_tokens: int = 0) -> ChatLogprobs | None:
        if self.top_logprobs is None:
            return None
        return chat_logprobs(completion.token_ids[sent_tokens:], (completion.logprobs or [])[sent_tokens:],
                             self.top_logprobs, self.ctx.tokenizer)

    def chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage)


async def create_chat_completion(ctx: ServerContext, body: ChatCompletionRequest, request: Request) -> Response:
    ctx.check_model(body.model)
    run = await ctx.in_prompt_thread(ChatRun, ctx, body)  # renders and tokenizes: off the event loop
    streams = await start_requests(ctx, run.request_id, [run.prompt], [run.params])
    if body.stream:
        return EventStreamResponse(_stream(run, streams), on_close=lambda: abort_unfinished(ctx, streams))
    outputs = await await_final_outputs(ctx, request, streams)
    if isinstance(outputs, Response):
        return outputs
    (output,) = outputs
    choices = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text), logprobs=run.logprobs(c),
                          finish_reason=c.finish_reason, stop_reason=c.stop_reason) for c in output.outputs]
    response = ChatCompletionResponse(id=run.request_id, created=run.created, model=run.model, choices=choices,
                                      usage=run.usage(output))
    return JSONResponse(dump(response))


async def _stream(run: ChatRun, streams):
    options = run.body.stream_options
    continuous = bool(options and options.continuous_usage_stats)
    sent_chars: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    finished: set[int] = set()
    latest = None
    try:
        async for _, output in follow(streams):
            latest = output
            for completion in output.outputs:
                index = completion.index
                if index in finished:
                    continue
                if index not in sent_chars:
                    sent_chars[index] = sent_tokens[index] = 0
                    role = ChatChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))
                    yield event(run.chunk([role], run.usage(None) if continuous else None))
                chars, tokens = sent_chars[index], sent_tokens[index]
                done = completion.finished()
                new_text = len(completion.text) > chars
                new_logprobs = run.top_logprobs is not None and len(completion.token_ids) > tokens
                if not (done or new_text or new_logprobs):
                    continue
                choice = ChatChunkChoice(
                    index=index, delta=DeltaMessage(content=completion.text[chars:] if new_text else None),
                    logprobs=run.logprobs(completion, tokens),
                    finish_reason=completion.finish_reason if done else None,
                    stop_reason=completion.stop_reason if done else None)
                sent_chars[index], sent_tokens[index] = len(completion.text), len(completion.token_ids)
                if done:
                    finished.add(index)
                yield event(run.chunk([choice], run.usage(output) if continuous else None))
        if options and options.include_usage:
            yield event(run.chunk([], run.usage(latest)))
    except ENGINE_ERRORS as error:
        yield event(engine_error(error).body())
    yield DONE
