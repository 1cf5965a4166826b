"""The step loop: one decode step for the running sequences on the smallest decoder that fits, then
prefill the newly admitted ones; sample, detokenize, check stops, free finished sequences at once."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import torch

from ..modeling import BucketModelForCausalLM
from .block_manager import BlockManager
from .detokenizer import Detokenizer, special_token_ids
from .outputs import RequestOutput
from .request import Request
from .sampler import Sample, Sampler, position_logprobs
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence


@dataclass(frozen=True)
class EngineConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int


class LLMEngine:
    def __init__(self, model: BucketModelForCausalLM, tokenizer, config: EngineConfig):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        compiled = model.compile_config
        self.block_manager = BlockManager(compiled.kvcache_num_blocks, compiled.kvcache_block_size)
        self.scheduler = Scheduler(config.max_num_seqs, config.max_num_batched_tokens, self.block_manager)
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.sampler = Sampler(self.eos_token_ids, self._decode_token)
        self.special_ids = special_token_ids(tokenizer)
        self.vocab_size = model.model_config.vocab_size
        self.requests: dict[str, Request] = {}
        self._request_counter = itertools.count()
        self.last_decoder_batch_size: int | None = None

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
        bad = [t for t in prompt_token_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")

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
        if plan.decodes:
            # The hot path: N running sequences -> the smallest compiled decoder B >= N.
            logits = self.model.decode(
                [seq.last_token_id for seq in plan.decodes],
                [seq.num_tokens - 1 for seq in plan.decodes],
                [seq.block_table for seq in plan.decodes],
            )
            self.last_decoder_batch_size = self.model.decoder_batch_size_for(len(plan.decodes))
            for seq, sample in zip(plan.decodes, self.sampler(logits, plan.decodes), strict=True):
                self._append(seq, sample, touched)
        for seq in plan.prefills:
            self._prefill(seq, now, touched)
        outputs = []
        for request_id, request in touched.items():
            outputs.append(request.output(streaming))
            if request.finished:
                request.metrics.finished_time = time.time()  # the output holds this same metrics object
                del self.requests[request_id]
        return outputs

    def _prefill(self, seq: Sequence, now: float, touched: dict[str, Request]) -> None:
        request = self.requests[seq.request_id]
        if request.metrics.first_scheduled_time is None:
            request.metrics.first_scheduled_time = now
        if seq.output_token_ids:
            # Recompute after preemption: the last token is fed by the next decode step.
            self.model.prefill(seq.token_ids[:-1], seq.block_table)
            return
        want_prompt_logprobs = seq.params.prompt_logprobs is not None and request.prompt_logprobs is None
        result = self.model.prefill(seq.prompt_token_ids, seq.block_table, return_hidden=want_prompt_logprobs)
        if want_prompt_logprobs:
            request.prompt_logprobs = self._prompt_logprobs(result.hidden, seq)
        self._append(seq, self.sampler(result.logits.unsqueeze(0), [seq])[0], touched)

    def _prompt_logprobs(self, hidden: torch.Tensor, seq: Sequence) -> list:
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[:-1]), dim=-1)
        prompt = seq.prompt_token_ids
        return [None] + [
            position_logprobs(logprobs[i], prompt[i + 1], seq.params.prompt_logprobs, self._decode_token)
            for i in range(len(prompt) - 1)
        ]

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
        runner = self.model.runner
        return {
            "decode_steps_per_decoder": dict(runner.decode_steps_per_decoder),
            "padded_rows": runner.padded_rows,
            "num_running": self.scheduler.num_running,
            "num_waiting": self.scheduler.num_waiting,
            "num_preemptions": self.scheduler.num_preemptions,
            "free_blocks": self.block_manager.num_free_blocks,
            "usable_blocks": self.block_manager.num_usable_blocks,
        }


def _eos_token_ids(model: BucketModelForCausalLM, tokenizer) -> set[int]:
    import json

    ids: set[int] = set()
    for name in ("generation_config.json", "config.json"):
        path = model.directory / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else (eos or []))
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
