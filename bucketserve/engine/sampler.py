"""From a step's logits to one token per sequence: penalties, logit_bias, min_tokens, temperature, top-k/p, min-p.

Each row is sampled with its sequence's own generator, so a seeded request draws the same tokens whatever
else shares its batch. Log-probabilities are those of the raw model output, as vLLM reports them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .outputs import Logprob, PositionLogprobs
from .sequence import Sequence


@dataclass
class Sample:
    token_id: int
    logprob: float
    top_logprobs: PositionLogprobs | None  # the sampled token and the top-k, when logprobs were asked for


def position_logprobs(logprobs: torch.Tensor, chosen: int, k: int, decode) -> PositionLogprobs:
    """The chosen token and the k most likely ones (k = -1: all), each with its rank."""
    k = logprobs.numel() if k == -1 else k
    entries: PositionLogprobs = {}
    if k:
        values, ids = logprobs.topk(k)
        for rank, (token, value) in enumerate(zip(ids.tolist(), values.tolist(), strict=True), start=1):
            entries[token] = Logprob(value, rank, decode(token))
    if chosen not in entries:
        rank = int((logprobs > logprobs[chosen]).sum()) + 1
        entries[chosen] = Logprob(float(logprobs[chosen]), rank, decode(chosen))
    return entries


class Sampler:
    def __init__(self, eos_token_ids: set[int], decode_token):
        self.eos_token_ids = eos_token_ids
        self.decode_token = decode_token  # token id -> its text, for Logprob.decoded_token

    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[Sample]:
        logits = logits.float()
        # A token's raw log-probability is its logit less its row's logsumexp: one reduction per row, where a
        # log-softmax wrote the whole vocabulary (with torch's argmax, 1.3 ms of a 30 ms step of 8 rows).
        log_normalizers = torch.logsumexp(logits, dim=-1, keepdim=True)
        greedy_tokens = first_argmax(logits).tolist()
        tokens = [self._choose(logits[i], greedy_tokens[i], seq) for i, seq in enumerate(seqs)]
        chosen = (logits[torch.arange(len(seqs)), tokens] - log_normalizers[:, 0]).tolist()
        samples = []
        for i, (seq, token) in enumerate(zip(seqs, tokens, strict=True)):
            top = None
            if seq.params.logprobs is not None:
                top = position_logprobs(logits[i] - log_normalizers[i], token, seq.params.logprobs, self.decode_token)
            samples.append(Sample(token, chosen[i], top))
        return samples

    def _choose(self, raw_logits: torch.Tensor, raw_greedy: int, seq: Sequence) -> int:
        """The row's token: raw_greedy (the raw logits' argmax) unless penalties, logit_bias, min_tokens or
        sampling apply."""
        params = seq.params
        logits = raw_logits
        if params.uses_penalties:
            logits = apply_penalties(logits, seq.prompt_token_ids, seq.output_token_ids, params)
        if params.logit_bias:
            ids, biases = zip(*params.logit_bias.items(), strict=True)
            logits = logits.index_add(0, torch.tensor(ids), torch.tensor(biases, dtype=logits.dtype))
        if len(seq.output_token_ids) < params.min_tokens:
            banned = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
            if banned:
                logits = logits.clone()
                logits[list(banned)] = float("-inf")
        if params.greedy:
            return raw_greedy if logits is raw_logits else int(logits.argmax())
        # Masked (-inf) entries stay masked: a huge temperature would turn -inf / inf into NaN.
        scaled = torch.where(torch.isinf(logits), logits, logits / params.temperature)
        probs = torch.softmax(filter_logits(scaled, params.top_k, params.top_p, params.min_p), dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))


def first_argmax(logits: torch.Tensor) -> torch.Tensor:
    """logits.argmax(-1) for [rows, vocab], the first of equal maxima. torch's argmax over a 49152-word row
    runs many times slower than its max (docs/PERFORMANCE.md, "the sampler"), so this takes the max of each
    block of the row, the first block holding the row's max, and the argmax within that block alone."""
    rows, vocab = logits.shape
    block = min(vocab & -vocab, 256)  # the largest power of two dividing vocab, at most 256
    if block < 32:
        return logits.argmax(dim=-1)
    blocks = logits.reshape(rows, vocab // block, block)
    best_block = blocks.amax(dim=-1).argmax(dim=-1)
    return best_block * block + blocks[torch.arange(rows), best_block].argmax(dim=-1)


def apply_penalties(logits: torch.Tensor, prompt_ids: list[int], output_ids: list[int], params) -> torch.Tensor:
    """vLLM's penalties: repetition over prompt and output tokens; presence and frequency over output tokens."""
    logits = logits.clone()
    vocab = logits.numel()
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(vocab, dtype=torch.bool)
        seen[torch.tensor(prompt_ids + output_ids, dtype=torch.long)] = True
        penalized = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if output_ids and (params.frequency_penalty or params.presence_penalty):
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=vocab)[:vocab].to(logits.dtype)
        logits = logits - params.frequency_penalty * counts - params.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Set to -inf every token outside top-k, outside the top-p nucleus, or below min_p x the top probability."""
    if top_k > 0 and top_k < logits.numel():
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens before it already reach top_p; the first is always kept.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[0] = False  # rounding can push the first token's "before" mass above a tiny top_p
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < min_p * probs.max(), float("-inf"))
    return logits
