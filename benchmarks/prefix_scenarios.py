"""Scenarios for T11 and T12: a cached system prompt's time to first token (prefix caching on vs off),
and a group of 8 prompts prefilled together vs one at a time (batched prefill).

Both run on a loaded bucketserve model; each engine gets its own block manager over the model's one KV
cache, and is used to the end before the next is made (a cache's blocks are only valid for its engine).
"""
from __future__ import annotations

import random
import statistics
import time
import traceback

from bucketserve.demo.checkpoint import SPECIAL_TOKENS
from bucketserve.demo.prompts import LARGE_BATCH_CONVERSATIONS
from bucketserve.engine.sampling_params import SamplingParams

from .workload import make_engine

SYSTEM_PROMPT_TOKENS = 1000  # T11: the cached part, about 90% of the prompt
T11_REPEATS = 5
T12_REPEATS = 3


def cached_system_prompt(model, tokenizer, seed: int = 0, repeats: int = T11_REPEATS) -> dict:
    """TTFT of requests whose first 90% is one system prompt, already cached (on) or recomputed (off)."""
    max_len = model.compile_config.max_seq_len
    prompt_len = min(SYSTEM_PROMPT_TOKENS * 10 // 9, max_len - 2)
    system_len = prompt_len * 9 // 10
    rng = random.Random(seed)
    vocab = len(tokenizer)

    def tokens(count):
        return [rng.randrange(len(SPECIAL_TOKENS), vocab) for _ in range(count)]

    system = tokens(system_len)
    questions = [tokens(prompt_len - system_len) for _ in range(repeats + 1)]
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    results = {"prompt_tokens": prompt_len, "system_prompt_tokens": system_len}
    for enabled in (False, True):
        engine = make_engine(model, tokenizer, enable_prefix_caching=enabled)
        _first_token_seconds(engine, system + questions[0], params)  # caches the system prompt; warms the graphs
        ttfts = [_first_token_seconds(engine, system + q, params) for q in questions[1:]]
        stats = engine.get_stats()
        results["on" if enabled else "off"] = {
            "ttft_p50_seconds": statistics.median(ttfts), "ttft_seconds": ttfts,
            "prefix_cache_hits": stats["prefix_cache_hits"], "prefix_cache_queries": stats["prefix_cache_queries"],
        }
    results["ttft_p50_ratio"] = results["on"]["ttft_p50_seconds"] / results["off"]["ttft_p50_seconds"]
    return results


def _first_token_seconds(engine, prompt: list[int], params) -> float:
    request_id = engine.new_request_id()
    started = time.perf_counter()
    engine.add_request(request_id, None, prompt, params)
    while engine.has_unfinished_requests():  # max_tokens=1: it finishes on the step that samples its first token
        engine.step()
    return time.perf_counter() - started


def seed_group_prompts(tokenizer, max_tokens: int) -> list[list[int]]:
    """The seed's group of 8 conversations, as the chat template (or plain encoding) tokenizes them, each
    cut to max_tokens (a --quick model's context is short)."""
    prompts = []
    for conversation in LARGE_BATCH_CONVERSATIONS:
        try:  # as LLM.chat: the template writes the special tokens itself
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            prompts.append(tokenizer.encode(text, add_special_tokens=False))
        except (ValueError, AttributeError):  # a tokenizer without a chat template
            prompts.append(tokenizer.encode(conversation[0]["content"]))
    return [list(p)[:max_tokens] for p in prompts]


def group_first_tokens(model, tokenizer, repeats: int = T12_REPEATS) -> dict:
    """Time until all 8 prompts of the seed's large group have their first token's logits: one batched
    prefill call (rows) against one prefill per prompt, as the engine ran them before (best of `repeats`
    each; sampling the 8 tokens afterwards is the same for both and left out)."""
    prompts = seed_group_prompts(tokenizer, model.compile_config.max_seq_len - 1)
    block_size = model.compile_config.kvcache_block_size
    tables, next_block = [], 1
    for prompt in prompts:
        needed = -(-len(prompt) // block_size)
        tables.append(list(range(next_block, next_block + needed)))
        next_block += needed
    one_at_a_time, batched = [], []
    for _ in range(repeats + 1):  # the first round warms both paths
        started = time.perf_counter()
        for prompt, table in zip(prompts, tables, strict=True):
            model.prefill(prompt, table)
        one_at_a_time.append(time.perf_counter() - started)
        started = time.perf_counter()
        model.prefill_batch(prompts, tables, [0] * len(prompts), [False] * len(prompts))
        batched.append(time.perf_counter() - started)
    one, together = min(one_at_a_time[1:]), min(batched[1:])
    return {"prompts": len(prompts), "prompt_tokens": [len(p) for p in prompts], "one_at_a_time_seconds": one,
            "batched_seconds": together, "ratio": together / one}


def run_both(model, tokenizer, log) -> dict:
    """T11 and T12 on `model`, each recorded with its reason if it fails (the rest of a bench run goes on)."""
    run = {}
    for name, scenario in (("T11", cached_system_prompt), ("T12", group_first_tokens)):
        log(f"prefix cache and batched prefill: {name}")
        try:
            run[name] = scenario(model, tokenizer)
        except Exception as err:
            traceback.print_exc()
            run[name] = {"skipped": f"{type(err).__name__}: {err}"}
    return run


def judge(results: dict) -> dict:
    """T11 and T12 from results["prefix_cache"] (bench/targets.py adds them to T1-T6)."""
    run = results.get("prefix_cache", {})
    t11_text = "a request whose first 90% is a cached system prompt: TTFT p50 <= 0.2x the uncached one"
    t12_text = "the seed's group of 8 arriving together: time until all 8 have a first token <= 0.5x one-at-a-time prefill"
    out = {}
    for name, text, key, ratio, limit in (("T11", t11_text, "T11", "ttft_p50_ratio", 0.2), ("T12", t12_text, "T12", "ratio", 0.5)):
        figure = run.get(key)
        if not figure or ratio not in figure:
            out[name] = {"description": text, "met": None, "value": None, "limit": None,
                         "detail": {"reason": (figure or {}).get("skipped", "not run")}}
        else:
            out[name] = {"description": text, "met": figure[ratio] <= limit, "value": figure[ratio], "limit": limit,
                         "detail": {k: v for k, v in figure.items() if k not in ("on", "off")}}
    return out


def report_lines(results: dict) -> list[str]:
    run = results.get("prefix_cache")
    if not run:
        return []
    lines = ["", "6. prefix cache and batched prefill (decoders [8, 4, 1])"]
    t11, t12 = run.get("T11", {}), run.get("T12", {})
    if "ttft_p50_ratio" in t11:
        lines.append(f"   T11 {t11['prompt_tokens']}-token prompt, {t11['system_prompt_tokens']} cached: TTFT p50 "
                     f"{t11['on']['ttft_p50_seconds'] * 1e3:.1f} ms cached vs {t11['off']['ttft_p50_seconds'] * 1e3:.1f} ms "
                     f"uncached ({t11['ttft_p50_ratio']:.2f}x)")
    if "ratio" in t12:
        lines.append(f"   T12 seed group of {t12['prompts']}: first tokens after {t12['batched_seconds'] * 1e3:.1f} ms batched "
                     f"vs {t12['one_at_a_time_seconds'] * 1e3:.1f} ms one at a time ({t12['ratio']:.2f}x)")
    return lines
