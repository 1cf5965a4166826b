"""HF transformers `generate` on the same weights and prompts, greedy: eager, and static cache + torch.compile.
(llama.cpp, the other peer, runs through its own binaries: llama_cpp.py.)

Each returns the same fields as scenarios.run_requests (seconds, output tokens, tokens/s, token ids), or
{"skipped": reason} when the peer cannot run here.
"""
from __future__ import annotations

import copy
import time

import torch

from .options import GROUP_SIZES, BenchOptions
from .workload import make_prompts


def _result(requests: int, seconds: float, token_ids: list[list[int]], **extra) -> dict:
    output_tokens = sum(len(t) for t in token_ids)
    return {"requests": requests, "seconds": seconds, "output_tokens": output_tokens,
            "output_tokens_per_second": output_tokens / seconds, "token_ids": token_ids, **extra}


def load_hf(checkpoint_dir, dtype: str):
    """HF transformers on the checkpoint, in the bench's dtype (the one bucketserve's systems run)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype))
    return model.eval()


def _generation_config(model, new_tokens: int, static: bool):
    config = copy.deepcopy(model.generation_config)
    config.eos_token_id = None  # ignore_eos: always new_tokens tokens, with no logits changed
    config.max_new_tokens, config.min_new_tokens = new_tokens, None
    config.do_sample, config.num_beams = False, 1
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0
    if static:
        from transformers import CompileConfig

        config.cache_implementation = "static"
        config.compile_config = CompileConfig(fullgraph=True, dynamic=False, mode="default")
        config.compile_config._compile_all_devices = True  # transformers compiles on accelerators only by default
    return config


@torch.inference_mode()
def _hf_run(model, prompts: list[list[int]], new_tokens: int, static: bool) -> tuple[float, list[list[int]]]:
    ids = torch.tensor(prompts, dtype=torch.long)
    config = _generation_config(model, new_tokens, static)
    started = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    seconds = time.perf_counter() - started
    return seconds, out[:, ids.shape[1]:].tolist()


def hf_groups(model, options: BenchOptions, tokenizer_vocab: int, static: bool) -> dict:
    """HF generate at batch = group size, on the seed's groups. With static=True the first call per batch
    size compiles (its time is reported apart) and the second is timed."""
    results = {}
    if not static:
        _hf_run(model, make_prompts(options, 1, tokenizer_vocab, salt=99), 2, static)  # warm-up
    for size in GROUP_SIZES:
        prompts = make_prompts(options, size, tokenizer_vocab, salt=size)
        extra = {}
        if static:
            extra["first_call_seconds"], _ = _hf_run(model, prompts, options.new_tokens, static)
        seconds, tokens = _hf_run(model, prompts, options.new_tokens, static)
        results[str(size)] = _result(size, seconds, tokens, **extra)
    return results
