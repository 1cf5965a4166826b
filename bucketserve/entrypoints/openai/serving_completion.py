"""POST /v1/completions: one engine request per prompt, n choices each (choice index = prompt * n + i).

echo prepends the prompt; with logprobs it also reports every prompt token's log-probability (the first
one null), which is what lm-evaluation-harness's loglikelihood reads. max_tokens=0 is allowed with echo,
as in vLLM: the engine generates one token that is not returned.
"""
from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from ...engine.outputs import CompletionOutput, RequestOutput
from .context import ServerContext
from .errors import bad_request
from .generation import ENGINE_ERRORS, abort_unfinished, await_final_outputs, engine_error, follow, start_requests
from .logprobs import completion_logprobs
from .prompt_tokens import Prompt, check_prompt, completion_prompts
from .protocol import CompletionChoice, CompletionRequest, CompletionResponse, PromptTokensDetails, Usage, dump
from .sampling import reject_unsupported, sampling_params
from .sse import DONE, EventStreamResponse, event


class CompletionRun:
    """One completions request in flight: its prompts, options and the response pieces built from them."""

    def __init__(self, ctx: ServerContext, body: CompletionRequest):
        self.ctx = ctx
        self.body = body
        reject_unsupported(body)
        self.echo_only = body.max_tokens == 0
        if self.echo_only and not body.echo:
            raise bad_request("max_tokens=0 generates nothing; use it with echo=true (to score the prompt) or ask "
                              "for at least 1 token", param="max_tokens")
        self.prompts: list[Prompt] = completion_prompts(ctx, body.prompt)
        engine_max_tokens = 1 if self.echo_only else body.max_tokens
        prompt_logprobs = body.logprobs if body.echo and body.logprobs is not None else None
        self.params = [sampling_params(ctx, body, check_prompt(ctx, prompt, engine_max_tokens), body.logprobs, prompt_logprobs)
                       for prompt in self.prompts]
        self.request_id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = ctx.served_model_name

    def response(self, choices: list[CompletionChoice], usage: Usage | None) -> CompletionResponse:
        return CompletionResponse(id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage)

    def usage(self, outputs: list[RequestOutput | None]) -> Usage:
        prompt_tokens = sum(len(prompt.token_ids) for prompt in self.prompts)
        completion_tokens = 0 if self.echo_only else sum(
            len(c.token_ids) for output in outputs if output is not None for c in output.outputs)
        cached_tokens = sum(output.num_cached_tokens or 0 for output in outputs if output is not None)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens,
                     prompt_tokens_details=PromptTokensDetails(cached_tokens=cached_tokens))

    def choice_index(self, prompt_index: int, completion: CompletionOutput) -> int:
        return prompt_index * self.body.n + completion.index

    def echo_part(self, prompt_index: int, output: RequestOutput) -> tuple[str, list[int], list]:
        """The prompt's text, token ids and log-probabilities, when echo is on."""
        if not self.body.echo:
            return "", [], []
        prompt = self.prompts[prompt_index]
        return prompt.echo_text(self.ctx.tokenizer), prompt.token_ids, output.prompt_logprobs or [None] * len(prompt.token_ids)

    def choice(self, prompt_index: int, output: RequestOutput, completion: CompletionOutput, sent_chars: int = 0,
               sent_tokens: int = 0, text_offset: int = 0, with_echo: bool = True, finished: bool = True) -> CompletionChoice:
        """The text (and log-probabilities, their text offsets from text_offset: the tokens' text already sent)
        after what was already sent; finished adds the finish reason."""
        text, token_ids, positions = self.echo_part(prompt_index, output) if with_echo else ("", [], [])
        if not self.echo_only:
            text += completion.text[sent_chars:]
            token_ids = token_ids + completion.token_ids[sent_tokens:]
            positions = positions + (completion.logprobs or [])[sent_tokens:]
        logprobs = None
        if self.body.logprobs is not None:
            logprobs = completion_logprobs(token_ids, positions, self.ctx.tokenizer, text_offset)
        reason = None
        if finished:
            reason = "length" if self.echo_only else completion.finish_reason
        return CompletionChoice(index=self.choice_index(prompt_index, completion), text=text, logprobs=logprobs,
                                finish_reason=reason, stop_reason=None if self.echo_only or not finished else completion.stop_reason)


async def create_completion(ctx: ServerContext, body: CompletionRequest, request: Request) -> Response:
    ctx.check_model(body.model)
    run = await ctx.in_prompt_thread(CompletionRun, ctx, body)  # tokenizes: off the event loop
    streams = await start_requests(ctx, run.request_id, run.prompts, run.params)
    if body.stream:
        return EventStreamResponse(_stream(run, streams), on_close=lambda: abort_unfinished(ctx, streams))
    outputs = await await_final_outputs(ctx, request, streams)
    if isinstance(outputs, Response):
        return outputs
    choices = [run.choice(prompt_index, output, completion)
               for prompt_index, output in enumerate(outputs) for completion in output.outputs]
    choices.sort(key=lambda choice: choice.index)
    return JSONResponse(dump(run.response(choices, run.usage(outputs))))


async def _stream(run: CompletionRun, streams):
    options = run.body.stream_options
    sent_chars: dict[int, int] = {}
    sent_tokens: dict[int, int] = {}
    sent_offsets: dict[int, int] = {}  # where the next token's text_offset starts, as in the whole response
    finished: set[int] = set()
    latest: list[RequestOutput | None] = [None] * len(streams)
    try:
        async for prompt_index, output in follow(streams):
            latest[prompt_index] = output
            for completion in output.outputs:
                index = run.choice_index(prompt_index, completion)
                if index in finished or (run.echo_only and not completion.finished()):
                    continue
                first = index not in sent_chars
                chars, tokens = sent_chars.get(index, 0), sent_tokens.get(index, 0)
                done = completion.finished()
                new_text = len(completion.text) > chars
                new_logprobs = run.body.logprobs is not None and len(completion.token_ids) > tokens
                if not (done or first or new_text or new_logprobs):
                    continue
                choice = run.choice(prompt_index, output, completion, chars, tokens, sent_offsets.get(index, 0),
                                    with_echo=first, finished=done)
                sent_chars[index], sent_tokens[index] = len(completion.text), len(completion.token_ids)
                if choice.logprobs is not None and choice.logprobs.tokens:
                    sent_offsets[index] = choice.logprobs.text_offset[-1] + len(choice.logprobs.tokens[-1])
                if done:
                    finished.add(index)
                usage = run.usage(latest) if options and options.continuous_usage_stats else None
                yield event(run.response([choice], usage))
        if options and options.include_usage:
            yield event(run.response([], run.usage(latest)))
    except ENGINE_ERRORS as error:
        yield event(engine_error(error).body())
    yield DONE
