"""From a request's sampling fields to the engine's SamplingParams (OpenAI defaults where a field is null),
and the 400 for options we accept in the schema but do not implement."""
from __future__ import annotations

import re

from ...engine.sampling_params import SamplingParams
from .context import ServerContext
from .errors import bad_request
from .protocol import ChatCompletionRequest, CompletionRequest, SamplingFields


def sampling_params(ctx: ServerContext, body: SamplingFields, max_tokens: int, logprobs: int | None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    logit_bias = _logit_bias(body.logit_bias)
    try:
        params = SamplingParams(
            n=body.n,
            temperature=_or(body.temperature, 1.0),
            top_p=_or(body.top_p, 1.0),
            top_k=_or(body.top_k, 0),
            min_p=_or(body.min_p, 0.0),
            seed=body.seed,
            max_tokens=max_tokens,
            min_tokens=body.min_tokens,
            stop=body.stop,
            stop_token_ids=body.stop_token_ids,
            include_stop_str_in_output=body.include_stop_str_in_output,
            ignore_eos=body.ignore_eos,
            skip_special_tokens=body.skip_special_tokens,
            presence_penalty=_or(body.presence_penalty, 0.0),
            frequency_penalty=_or(body.frequency_penalty, 0.0),
            repetition_penalty=_or(body.repetition_penalty, 1.0),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            logit_bias=logit_bias,
        )
        params.check_vocabulary(ctx.vocab_size)
    except ValueError as error:  # SamplingParams names the field and the rule
        raise bad_request(str(error), param=getattr(error, "field", None)) from error
    return params


def reject_unsupported(body: CompletionRequest | ChatCompletionRequest) -> None:
    """A request that sets an option we do not implement expects what it does: say so rather than ignore it."""
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")
    if isinstance(body, CompletionRequest):
        if body.best_of is not None and body.best_of != body.n:
            raise bad_request(f"best_of {body.best_of} (more candidates than the n={body.n} returned) is not supported; "
                              "leave it unset or equal to n", param="best_of")
        return
    for name in ("tools", "functions"):
        if getattr(body, name):
            raise bad_request(f"{name} (function calling) is not supported by this server", param=name)
    if body.tool_choice not in (None, "none", "auto"):
        raise bad_request(f"tool_choice {body.tool_choice!r} needs function calling, which this server does not support",
                          param="tool_choice")
    if body.response_format is not None and body.response_format.get("type") != "text":
        raise bad_request(f"response_format {body.response_format.get('type')!r} (structured output) is not supported; "
                          "only {\"type\": \"text\"}", param="response_format")


# OpenAI's logit_bias keys: token ids in canonical decimal. int() would also take " 1", "+1", "01" and "1_0" (10).
CANONICAL_TOKEN_ID = re.compile(r"0|[1-9][0-9]*")


def _logit_bias(logit_bias: dict[str, float] | None) -> dict[int, float] | None:
    """JSON's string keys as token ids (their range is SamplingParams' to check)."""
    if not logit_bias:
        return None
    for token in logit_bias:
        if not CANONICAL_TOKEN_ID.fullmatch(token):
            raise bad_request(f"logit_bias key {token[:40]!r} is not a token id; keys are token ids written in plain "
                              "decimal, e.g. \"42\" (no sign, spaces, leading zeros or underscores)", param="logit_bias")
    return {int(token): bias for token, bias in logit_bias.items()}


def _or(value, default):
    return default if value is None else value
