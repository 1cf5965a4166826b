"""What every system is given: the same prompts (token ids, fixed length) and greedy sampling."""
from __future__ import annotations

import random

from bucketserve.demo.checkpoint import SPECIAL_TOKENS
from bucketserve.engine.llm_engine import EngineConfig, LLMEngine
from bucketserve.engine.sampling_params import SamplingParams

from .options import BenchOptions


def make_prompts(options: BenchOptions, count: int, tokenizer_vocab: int, salt: int = 0) -> list[list[int]]:
    """`count` prompts of options.prompt_len ordinary token ids, the same on every run with the same seed."""
    rng = random.Random(options.seed * 1000 + salt)
    first = len(SPECIAL_TOKENS)
    return [[rng.randrange(first, tokenizer_vocab) for _ in range(options.prompt_len)] for _ in range(count)]


def greedy_params(options: BenchOptions) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=options.new_tokens, ignore_eos=True)


def load_tokenizer(directory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory)


def make_engine(model, tokenizer, enable_prefix_caching: bool = True) -> LLMEngine:
    """An LLMEngine over an already loaded model, configured as LLM() would configure it."""
    compiled = model.compile_config
    config = EngineConfig(max_num_seqs=compiled.batch_size, max_num_batched_tokens=compiled.max_seq_len,
                          max_model_len=compiled.max_seq_len, enable_prefix_caching=enable_prefix_caching)
    return LLMEngine(model.executor, tokenizer, config)
