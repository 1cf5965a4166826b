"""What crosses the executor boundary each engine step (vLLM's SchedulerOutput / ModelRunnerOutput): the decode
rows and the prefill chunks in, their logits out. Plain data, so a tensor-parallel leader sends the same object
to every rank."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DecodeRows:
    """One token for each running sequence: its id, its position, the sequence's block table."""

    input_ids: list[int]
    positions: list[int]
    block_tables: list[list[int]]


@dataclass(frozen=True)
class PrefillChunks:
    """One prompt chunk per row: its tokens, the sequence's block table, the position of its first token, and
    whether the final-norm hidden states are wanted back (prompt logprobs)."""

    token_ids: list[list[int]]
    block_tables: list[list[int]]
    starts: list[int]
    return_hidden: list[bool]


@dataclass(frozen=True)
class StepInput:
    decode: DecodeRows | None = None  # run first: a running sequence waits at most one prefill budget
    prefill: PrefillChunks | None = None


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [vocab] fp32: the next-token logits after the prompt
    hidden: torch.Tensor | None  # [prompt_len, hidden] final-norm states, when asked for (prompt logprobs)


@dataclass
class StepOutput:
    decode_logits: torch.Tensor | None = None  # [N, vocab] fp32, one row per decode row
    decoder_batch_size: int | None = None  # the compiled decoder the decode rows ran on
    prefills: list[PrefillOutput] = field(default_factory=list)  # one per prefill chunk
