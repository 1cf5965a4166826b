"""The engine's per-position log-probabilities ({token_id: Logprob}) in OpenAI's two shapes: the legacy
completions one (parallel lists) and the chat one (a list of token objects)."""
from __future__ import annotations

from ...engine.outputs import PositionLogprobs
from .protocol import ChatLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob

# JSON has no -inf; vLLM reports impossible tokens as this.
MIN_LOGPROB = -9999.0


def completion_logprobs(token_ids: list[int], positions: list[PositionLogprobs | None], tokenizer,
                        text_offset: int = 0) -> CompletionLogprobs:
    """positions[i] holds token_ids[i] and the top alternatives there, or None (the first prompt token)."""
    result = CompletionLogprobs()
    for token_id, entries in zip(token_ids, positions, strict=True):
        chosen = entries.get(token_id) if entries else None
        token = chosen.decoded_token if chosen is not None and chosen.decoded_token is not None else tokenizer.decode([token_id])
        result.tokens.append(token)
        result.text_offset.append(text_offset)
        text_offset += len(token)
        if chosen is None:
            result.token_logprobs.append(None)
            result.top_logprobs.append(None)
            continue
        result.token_logprobs.append(_finite(chosen.logprob))
        result.top_logprobs.append({_text(t, lp, tokenizer): _finite(lp.logprob) for t, lp in entries.items()})
    return result


def chat_logprobs(token_ids: list[int], positions: list[PositionLogprobs], top_logprobs: int, tokenizer) -> ChatLogprobs:
    content = []
    for token_id, entries in zip(token_ids, positions, strict=True):
        chosen = entries[token_id]
        text = _text(token_id, chosen, tokenizer)
        ranked = sorted((lp.rank or 0, t, lp) for t, lp in entries.items() if lp.rank is not None and lp.rank <= top_logprobs)
        content.append(TokenLogprob(
            token=text, logprob=_finite(chosen.logprob), bytes=list(text.encode("utf-8")),
            top_logprobs=[TopLogprob(token=_text(t, lp, tokenizer), logprob=_finite(lp.logprob),
                                     bytes=list(_text(t, lp, tokenizer).encode("utf-8"))) for _, t, lp in ranked],
        ))
    return ChatLogprobs(content=content)


def _text(token_id: int, logprob, tokenizer) -> str:
    return logprob.decoded_token if logprob.decoded_token is not None else tokenizer.decode([token_id])


def _finite(value: float) -> float:
    return max(value, MIN_LOGPROB)
