"""From a request's sampling fields to the engine's SamplingParams (OpenAI defaults where a field is null)."""
from __future__ import annotations

from ...engine.sampling_params import SamplingParams
from .context import ServerContext
from .errors import bad_request
from .protocol import SamplingFields


def sampling_params(ctx: ServerContext, body: SamplingFields, max_tokens: int, logprobs: int | None,
                    prompt_logprobs: int | None = None) -> SamplingParams:
    bad_stop_ids = [t for t in body.stop_token_ids or [] if t >= ctx.vocab_size]
    if bad_stop_ids:
        raise bad_request(f"stop_token_ids {bad_stop_ids[:5]} are outside the vocabulary [0, {ctx.vocab_size})",
                          param="stop_token_ids")
    try:
        return SamplingParams(
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
        )
    except ValueError as error:  # SamplingParams names the field and the rule
        raise bad_request(str(error)) from error


def _or(value, default):
    return default if value is None else value
