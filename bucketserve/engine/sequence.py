"""One sequence of one request: its tokens, its KV blocks, its sampling state and its output so far."""
from __future__ import annotations

import enum

import torch

from .detokenizer import Detokenizer
from .outputs import PositionLogprobs
from .sampling_params import SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, index: int, prompt_token_ids: list[int], params: SamplingParams,
                 detokenizer: Detokenizer, generator: torch.Generator | None):
        self.request_id = request_id
        self.index = index  # which of the request's n completions
        self.prompt_token_ids = prompt_token_ids
        self.output_token_ids: list[int] = []
        self.params = params
        self.detokenizer = detokenizer
        self.generator = generator  # seeded per sequence, so batching never changes its samples
        self.status = Status.WAITING
        self.block_table: list[int] = []
        # KV state: how many of token_ids are in the cache, and the chained hashes of its full blocks so far.
        self.num_computed_tokens = 0
        self.block_hashes: list[bytes] = []
        self.num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache when first admitted
        self.cumulative_logprob = 0.0
        self.logprobs: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def prefill_target(self) -> int:
        """Tokens a prefill must have computed: the prompt, or after preemption all but the last token
        (which the next decode step feeds)."""
        return self.num_tokens - 1 if self.output_token_ids else len(self.prompt_token_ids)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.prefill_target

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    def finish(self, reason: str, stop_reason: int | str | None = None) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
