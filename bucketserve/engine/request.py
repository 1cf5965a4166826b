"""One request: its prompt, its n sequences, its prompt log-probabilities and its timings."""
from __future__ import annotations

from .outputs import CompletionOutput, PositionLogprobs, RequestMetrics, RequestOutput
from .sequence import Sequence


class Request:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], seqs: list[Sequence], arrival_time: float):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.seqs = seqs
        self.prompt_logprobs: list[PositionLogprobs | None] | None = None
        self.metrics = RequestMetrics(arrival_time=arrival_time)

    @property
    def finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)

    def output(self, streaming: bool = False) -> RequestOutput:
        """The request so far; while streaming, text that may still turn into a stop string is held back."""
        completions = [
            CompletionOutput(
                index=seq.index,
                text=seq.detokenizer.streamable_text(seq.is_finished) if streaming else seq.detokenizer.text,
                token_ids=list(seq.output_token_ids),
                cumulative_logprob=seq.cumulative_logprob,
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
            )
            for seq in self.seqs
        ]
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids, self.prompt_logprobs,
                             completions, self.finished, self.metrics, self.num_cached_tokens)

    @property
    def num_cached_tokens(self) -> int | None:
        """Prompt tokens the first completion found in the prefix cache (None until it is scheduled)."""
        return self.seqs[0].num_cached_tokens
