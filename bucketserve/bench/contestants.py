"""The systems the real-model mode times, behind one call: generate(prompts, max_tokens, ignore_eos) -> the
fields of scenarios.run_requests (seconds, output tokens, tokens/s, token ids).

bucketserve: an LLMEngine over a loaded compiled directory, every prompt added at once (continuous batching
on the smallest decoder that fits). llama.cpp: one llama-cpp-python `Llama` object over a GGUF file, the
requests one after another, which is how a user serves several requests with it (its Python API runs one
sequence at a time). Both greedy, on the same token ids, and both timings include the prompt's prefill.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..engine.sampling_params import SamplingParams
from .scenarios import run_requests
from .workload import make_engine


class Ours:
    def __init__(self, name: str, model, tokenizer):
        self.name, self.model = name, model
        self.engine = make_engine(model, tokenizer)

    def generate(self, prompts: list[list[int]], max_tokens: int, ignore_eos: bool) -> dict:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        return run_requests(self.engine, prompts, params)


class LlamaCpp:
    """llama.cpp on `gguf_file` with the bench's threads; refuses to start (ImportError) without llama-cpp-python."""

    def __init__(self, name: str, gguf_file: Path, max_seq_len: int, prefill_chunk_size: int, threads: int, seed: int):
        from llama_cpp import Llama

        self.name, self.gguf_file = name, gguf_file
        self.llm = Llama(model_path=str(gguf_file), n_ctx=max_seq_len, n_batch=prefill_chunk_size, n_threads=threads,
                         n_threads_batch=threads, seed=seed, verbose=False)

    def generate(self, prompts: list[list[int]], max_tokens: int, ignore_eos: bool) -> dict:
        started, token_ids = time.perf_counter(), []
        for prompt in prompts:
            token_ids.append(self._generate_one(prompt, max_tokens, ignore_eos))
        seconds = time.perf_counter() - started
        output_tokens = sum(len(t) for t in token_ids)
        return {"requests": len(prompts), "seconds": seconds, "output_tokens": output_tokens,
                "output_tokens_per_second": output_tokens / seconds, "token_ids": token_ids, "batch": 1}

    def _generate_one(self, prompt: list[int], max_tokens: int, ignore_eos: bool) -> list[int]:
        self.llm.reset()
        eos, tokens = self.llm.token_eos(), []
        # top_k=1 is greedy in llama.cpp's sampler chain; no penalties, so the logits are the model's.
        for token in self.llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(token)  # the end-of-sequence token counts, as bucketserve's engine counts it
            if len(tokens) == max_tokens or (token == eos and not ignore_eos):
                break
        return tokens

    def close(self) -> None:
        self.llm.close()
