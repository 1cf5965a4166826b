"""The vLLM-compatible offline API: LLM(model=...).generate / .chat / .get_stats."""
from __future__ import annotations

import operator
import time
from collections.abc import Sequence as Seq
from typing import Any

from tqdm.auto import tqdm

from ..compiled_options import check_options_match
from ..engine.llm_engine import EngineConfig, LLMEngine
from ..engine.outputs import RequestOutput
from ..engine.sampling_params import SamplingParams
from ..modeling import AutoModelForCausalLM

# vLLM engine arguments a script may pass that have no effect here (no GPU memory pool to size, etc.).
IGNORED_VLLM_ARGS = ("trust_remote_code", "gpu_memory_utilization", "enforce_eager", "disable_log_stats",
                     "swap_space", "disable_custom_all_reduce")


class LLM:
    def __init__(self, model: str, device: str = "auto", max_num_seqs: int | None = None,
                 max_num_batched_tokens: int | None = None, max_model_len: int | None = None,
                 block_size: int | None = None, tokenizer: str | None = None, dtype: str = "auto",
                 tensor_parallel_size: int | None = None, seed: int | None = None,
                 enable_prefix_caching: bool = True, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(IGNORED_VLLM_ARGS))
        if unknown:
            raise TypeError(f"LLM() got unexpected arguments {unknown}")
        self.model = AutoModelForCausalLM.from_pretrained(model)
        compiled = self.model.compile_config
        # One normalizer for these and from_pretrained's options alike (compiled_options.py).
        given = dict(device=device, dtype=dtype, tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs,
                     max_model_len=max_model_len, block_size=block_size)
        check_options_match({name: value for name, value in given.items() if value is not None}, compiled,
                            self.model.model_config, model)
        max_model_len = compiled.max_seq_len
        # A prompt longer than the budget is prefilled over several steps, so any positive budget works.
        if max_num_batched_tokens is not None and (isinstance(max_num_batched_tokens, bool) or
                                                   not isinstance(max_num_batched_tokens, int) or max_num_batched_tokens < 1):
            raise ValueError(f"max_num_batched_tokens must be a positive integer, got {max_num_batched_tokens!r}")
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        except (OSError, ValueError) as error:  # transformers' message blames missing packages when files are missing
            raise ValueError(f"could not load a tokenizer from {tokenizer or model}: {error}\n(a compiled directory has "
                             f"one when its checkpoint had tokenizer files; otherwise pass tokenizer=PATH)") from error
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        config = EngineConfig(
            max_num_seqs=compiled.batch_size,
            max_num_batched_tokens=max_num_batched_tokens or max_model_len,
            max_model_len=max_model_len,
            enable_prefix_caching=bool(enable_prefix_caching),
        )
        self.llm_engine = LLMEngine(self.model.executor, self.tokenizer, config)

    def close(self) -> None:
        """Stop tensor-parallel workers; the LLM cannot generate afterwards. (Also done on garbage collection.)"""
        self.model.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_tokenizer(self):
        return self.tokenizer

    @property
    def rank(self) -> int:
        """torchrun's RANK for a model whose ranks it launched, else 0."""
        return self.model.rank

    def follow(self) -> None:
        """On a torchrun rank other than 0: run rank 0's steps until rank 0 closes the model; on rank 0, nothing."""
        self.model.follow()

    def generate(self, prompts, sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Under torchrun every rank calls this with the same script: rank 0 schedules its own prompts, the other
        ranks run its steps, and every rank returns rank 0's outputs."""
        with self.model.executor.script_call() as script:
            if script.runs_here:
                script.result = self._run(self._add_requests(prompts, sampling_params), use_tqdm)
        return script.result

    def _add_requests(self, prompts, sampling_params) -> list[str]:
        """Every prompt checked first, then all added; returns their request ids."""
        items = _as_prompt_list(prompts)
        params = _params_per_prompt(sampling_params, len(items))
        encoded = [self._encode(item) for item in items]
        for (_, token_ids), p in zip(encoded, params, strict=True):  # reject bad prompts before any request starts
            self.llm_engine.validate_prompt(token_ids)
            p.check_vocabulary(self.llm_engine.vocab_size)
        ids = []
        try:
            for (text, token_ids), p in zip(encoded, params, strict=True):
                ids.append(self.llm_engine.new_request_id())
                self.llm_engine.add_request(ids[-1], text, token_ids, p)
        except BaseException:  # leave nothing of this call in the engine
            for request_id in ids:
                self.llm_engine.abort_request(request_id)
            raise
        return ids

    def chat(self, messages, sampling_params=None, use_tqdm: bool = True, chat_template: str | None = None,
             add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Under torchrun, as generate: every rank returns rank 0's outputs."""
        with self.model.executor.script_call() as script:
            if script.runs_here:
                script.result = self._chat(messages, sampling_params, use_tqdm, chat_template, add_generation_prompt)
        return script.result

    def _chat(self, messages, sampling_params, use_tqdm, chat_template, add_generation_prompt) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = []
        for conv in conversations:
            text = self.tokenizer.apply_chat_template(conv, chat_template=chat_template, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
            # The template writes the special tokens (BOS included) itself: encoding must not add them again.
            prompts.append({"prompt": text, "prompt_token_ids": self.tokenizer.encode(text, add_special_tokens=False)})
        return self._run(self._add_requests(prompts, sampling_params), use_tqdm)

    def get_stats(self) -> dict:
        return self.llm_engine.get_stats()

    def _encode(self, item) -> tuple[str | None, list[int]]:
        if isinstance(item, str):
            return item, self.tokenizer.encode(item, add_special_tokens=True)
        if isinstance(item, dict) and "prompt_token_ids" in item:
            return item.get("prompt"), [_as_token_id(t) for t in item["prompt_token_ids"]]
        if isinstance(item, dict) and "prompt" in item:
            return item["prompt"], self.tokenizer.encode(item["prompt"], add_special_tokens=True)
        raise TypeError(f"a prompt must be a str or a dict with 'prompt' or 'prompt_token_ids', got {type(item).__name__}")

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        """Step the engine until every request of this call finished (steps in this frame: the hot path's
        depth is counted in docs/ARCHITECTURE.md)."""
        engine = self.llm_engine
        finished: dict[str, RequestOutput] = {}
        speed = _Speed()
        with tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True, disable=not use_tqdm) as bar:
            try:
                while engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.finished:
                            finished[out.request_id] = out
                            bar.update(1)
                            bar.set_postfix_str(speed.add(out))
            finally:
                # On an error (or Ctrl-C) leave nothing of this call running in the engine.
                for request_id in request_ids:
                    if request_id not in finished:
                        engine.abort_request(request_id)
        return [finished[i] for i in request_ids]


class _Speed:
    """tqdm's postfix: input and output tokens per second of the finished requests so far."""

    def __init__(self):
        self.started, self.prompt_tokens, self.output_tokens = time.perf_counter(), 0, 0

    def add(self, out: RequestOutput) -> str:
        self.prompt_tokens += len(out.prompt_token_ids)
        self.output_tokens += sum(len(c.token_ids) for c in out.outputs)
        elapsed = time.perf_counter() - self.started
        return f"est. speed input: {self.prompt_tokens / elapsed:.2f} toks/s, output: {self.output_tokens / elapsed:.2f} toks/s"


def _as_token_id(token):
    """An integer of any kind (numpy's, torch's) as a Python int; anything else as given, for
    validate_prompt to reject."""
    try:
        return operator.index(token)
    except TypeError:
        return token


def _as_prompt_list(prompts) -> list:
    if isinstance(prompts, (str, dict)):
        return [prompts]
    items = list(prompts)
    if not items:
        raise ValueError("generate needs at least one prompt")
    return items


def _params_per_prompt(sampling_params, count: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * count
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * count
    params = list(sampling_params)
    if len(params) != count:
        raise ValueError(f"got {len(params)} SamplingParams for {count} prompts; give one, or one per prompt")
    return params
