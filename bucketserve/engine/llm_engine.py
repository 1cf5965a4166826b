"""The step loop: one decode step for the running sequences on the smallest decoder that fits, then one
batched prefill of the scheduled prompt chunks (their cached prefixes skipped); sample, detokenize, check
stops, free finished sequences at once. The device work of a step is one executor call (runtime/executor.py)."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch

from ..models.vocabulary import check_token_ids
from ..runtime.executor import Executor
from ..runtime.step import DecodeRows, PrefillChunks, PrefillOutput, StepInput
from .block_manager import BlockManager
from .detokenizer import Detokenizer, special_token_ids
from .outputs import RequestOutput
from .request import Request
from .sampler import Sample, Sampler, position_logprobs
from .sampling_params import SamplingParams
from .scheduler import PrefillChunk, Scheduler
from .sequence import Sequence
from .step_stats import StepStats


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_prefix_caching: bool = True


class LLMEngine:
    def __init__(self, executor: Executor, tokenizer, config: EngineConfig):
        self.executor = executor
        self.tokenizer = tokenizer
        self.config = config
        compiled = executor.compile_config
        self.block_manager = BlockManager(compiled.kvcache_num_blocks, compiled.kvcache_block_size,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(config.max_num_seqs, config.max_num_batched_tokens, self.block_manager)
        self.eos_token_ids = _eos_token_ids(executor, tokenizer)
        self.sampler = Sampler(self.eos_token_ids, self._decode_token)
        self.special_ids = special_token_ids(tokenizer)
        self.vocab_size = executor.model_config.vocab_size
        self.requests: dict[str, Request] = {}
        self._request_counter = itertools.count()
        self.last_decoder_batch_size: int | None = None
        self.step_stats = StepStats()

    def _decode_token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    # ---- requests in and out ----
    def new_request_id(self) -> str:
        return str(next(self._request_counter))

    def validate_prompt(self, prompt_token_ids: list[int]) -> None:
        if not prompt_token_ids:
            raise ValueError("the prompt is empty; give at least one token")
        if len(prompt_token_ids) >= self.config.max_model_len:
            raise ValueError(
                f"the prompt has {len(prompt_token_ids)} tokens, which leaves no room to generate within "
                f"max_model_len {self.config.max_model_len}; shorten it to at most {self.config.max_model_len - 1} tokens"
            )
        check_token_ids(prompt_token_ids, self.vocab_size, "prompt token ids")

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, arrival_time: float | None = None) -> None:
        self.validate_prompt(prompt_token_ids)
        params.check_vocabulary(self.vocab_size)
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already running")
        seqs = []
        for index in range(params.n):
            generator = None
            if params.seed is not None:
                generator = torch.Generator().manual_seed(params.seed + index)
            detokenizer = Detokenizer(self.tokenizer, self.special_ids, prompt_token_ids, params.skip_special_tokens,
                                      params.stop_strings, params.include_stop_str_in_output)
            seqs.append(Sequence(request_id, index, list(prompt_token_ids), params, detokenizer, generator))
        request = Request(request_id, prompt, list(prompt_token_ids), seqs, arrival_time or time.time())
        self.requests[request_id] = request
        for seq in seqs:
            self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return
        for seq in request.seqs:
            if not seq.is_finished:
                seq.finish("abort")
            self.scheduler.finish(seq)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step ----
    def step(self, streaming: bool = False) -> list[RequestOutput]:
        """Run one engine step; returns the requests that advanced (finished ones leave the engine)."""
        plan = self.scheduler.schedule()
        now = time.time()
        touched: dict[str, Request] = {}
        want_hidden = [self._wants_prompt_logprobs(chunk) for chunk in plan.prefills]
        # The hot path: N running sequences -> the smallest compiled decoder B >= N; then the prompt chunks.
        ran = self.executor.call("execute", StepInput(_decode_rows(plan.decodes), _prefill_chunks(plan.prefills, want_hidden)))
        if plan.decodes:
            self.last_decoder_batch_size = ran.decoder_batch_size
            self.step_stats.record(len(plan.decodes), ran.decoder_batch_size)
            for seq, sample in zip(plan.decodes, self.sampler(ran.decode_logits, plan.decodes), strict=True):
                seq.num_computed_tokens = seq.num_tokens
                self.block_manager.register_computed(seq)
                self._append(seq, sample, touched)
        if plan.prefills:
            self._prefilled(plan.prefills, ran.prefills, want_hidden, now, touched)
        outputs = []
        for request_id, request in touched.items():
            outputs.append(request.output(streaming))
            if request.finished:
                request.metrics.finished_time = time.time()  # the output holds this same metrics object
                del self.requests[request_id]
        return outputs

    def _prefilled(self, chunks: list[PrefillChunk], results: list[PrefillOutput], want_hidden: list[bool], now: float,
                   touched: dict[str, Request]) -> None:
        """After one batched prefill of every scheduled chunk (one row each): a chunk that ends a prompt samples
        its first token."""
        finished_prompts = []
        for chunk, result, hidden_wanted in zip(chunks, results, want_hidden, strict=True):
            seq, request = chunk.seq, self.requests[chunk.seq.request_id]
            if request.metrics.first_scheduled_time is None:
                request.metrics.first_scheduled_time = now
            if hidden_wanted:
                self._add_prompt_logprobs(request, seq, chunk.start, result.hidden)
            seq.num_computed_tokens = chunk.start + chunk.num_tokens
            self.block_manager.register_computed(seq)
            # After preemption the recompute stops before the last token, which the next decode feeds.
            if chunk.completes_prefill and not seq.output_token_ids:
                finished_prompts.append((seq, result.logits))
        if finished_prompts:
            seqs = [seq for seq, _ in finished_prompts]
            samples = self.sampler(torch.stack([logits for _, logits in finished_prompts]), seqs)
            for seq, sample in zip(seqs, samples, strict=True):
                self._append(seq, sample, touched)

    def _wants_prompt_logprobs(self, chunk: PrefillChunk) -> bool:
        """Whether this chunk computes the next prompt position still missing from the request's prompt_logprobs
        (a request asking for them prefills its whole prompt, never from the prefix cache)."""
        seq = chunk.seq
        if seq.params.prompt_logprobs is None or seq.output_token_ids:
            return False
        done = self.requests[seq.request_id].prompt_logprobs
        next_hidden = len(done) - 1 if done is not None else 0  # hidden state i gives prompt token i + 1
        return len(done or ()) < len(seq.prompt_token_ids) and chunk.start <= next_hidden < chunk.start + chunk.num_tokens

    def _add_prompt_logprobs(self, request: Request, seq: Sequence, start: int, hidden: torch.Tensor) -> None:
        if request.prompt_logprobs is None:
            request.prompt_logprobs = [None]  # the first prompt token has no log-probability
        prompt = seq.prompt_token_ids
        first = len(request.prompt_logprobs) - 1  # the hidden position that gives the next missing entry
        last = min(start + hidden.shape[0], len(prompt) - 1)  # hidden states before the last prompt token
        if first >= last:
            return
        logprobs = torch.log_softmax(self.executor.call("compute_logits", hidden[first - start : last - start]), dim=-1)
        request.prompt_logprobs.extend(
            position_logprobs(logprobs[i - first], prompt[i + 1], seq.params.prompt_logprobs, self._decode_token)
            for i in range(first, last)
        )

    def _append(self, seq: Sequence, sample: Sample, touched: dict[str, Request]) -> None:
        request = self.requests[seq.request_id]
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = time.time()
        params = seq.params
        token = sample.token_id
        seq.output_token_ids.append(token)
        seq.cumulative_logprob += sample.logprob
        if seq.logprobs is not None:
            seq.logprobs.append(sample.top_logprobs)
        touched[seq.request_id] = request
        may_stop = len(seq.output_token_ids) >= params.min_tokens
        stop_token = may_stop and (token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids))
        stop_string = None
        if not stop_token or params.include_stop_str_in_output:  # a stop token's text stays out of the output
            stop_string = seq.detokenizer.add_token(token, check_stop=may_stop)
        if stop_string is not None:
            seq.finish("stop", stop_string)
        elif stop_token:
            seq.finish("stop", token if token in params.stop_token_ids else None)
        elif params.max_tokens is not None and len(seq.output_token_ids) >= params.max_tokens:
            seq.finish("length")
        elif seq.num_tokens >= self.config.max_model_len:
            seq.finish("length")
        if seq.is_finished:
            self.scheduler.finish(seq)

    # ---- what ran ----
    def get_stats(self) -> dict:
        runner = self.executor.driver  # counts the decoder steps it ran since load
        return {
            "decode_steps_per_decoder": dict(runner.decode_steps_per_decoder),
            "padded_rows": runner.padded_rows,
            "live_rows": dict(self.step_stats.live_rows),  # live rows (before padding) -> decode steps
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "num_preemptions": self.scheduler.num_preemptions,
            "free_blocks": self.block_manager.num_free_blocks,  # cached blocks nobody holds included
            "usable_blocks": self.block_manager.num_usable_blocks,
            "held_blocks": self.block_manager.num_held_blocks,
            "cached_blocks": self.block_manager.num_cached_blocks,
            # In tokens, as vLLM counts them: prompt tokens looked up in the cache, and those found there.
            "prefix_cache_queries": self.block_manager.prefix_cache.num_query_tokens,
            "prefix_cache_hits": self.block_manager.prefix_cache.num_hit_tokens,
        }


def _decode_rows(seqs: list[Sequence]) -> DecodeRows | None:
    if not seqs:
        return None
    return DecodeRows([seq.last_token_id for seq in seqs], [seq.num_tokens - 1 for seq in seqs],
                      [seq.block_table for seq in seqs])


def _prefill_chunks(chunks: list[PrefillChunk], want_hidden: list[bool]) -> PrefillChunks | None:
    if not chunks:
        return None
    return PrefillChunks([chunk.seq.token_ids[chunk.start : chunk.start + chunk.num_tokens] for chunk in chunks],
                         [chunk.seq.block_table for chunk in chunks], [chunk.start for chunk in chunks], want_hidden)


def _eos_token_ids(executor: Executor, tokenizer) -> set[int]:
    import json

    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = executor.directory / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
