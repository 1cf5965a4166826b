"""Accuracy of a compiled model, through the public API only: perplexity on a fixed text shipped with the package
(prompt log-probabilities, LLM.generate with prompt_logprobs=0), and greedy answers to chat questions to compare
with another system's token for token."""
from __future__ import annotations

import math
from pathlib import Path

from bucketserve.engine.sampling_params import SamplingParams

TEXT_FILE = "data/founding_documents.txt"  # public-domain US founding documents, under benchmarks/


def load_text() -> str:
    return (Path(__file__).parent / TEXT_FILE).read_text(encoding="utf-8")


def chat_questions() -> list[str]:
    """The seed page's 13 questions and the demo's 3 chat questions."""
    from bucketserve.demo.prompts import CHAT_QUESTIONS, all_prompts

    return all_prompts() + list(CHAT_QUESTIONS)


def windows(token_ids: list[int], window: int) -> list[list[int]]:
    """Consecutive, non-overlapping windows of at most `window` tokens; a last window of one token (nothing to
    predict) is dropped."""
    if window < 2:
        raise ValueError(f"a perplexity window needs at least 2 tokens, got {window}")
    chunks = [token_ids[start:start + window] for start in range(0, len(token_ids), window)]
    return [chunk for chunk in chunks if len(chunk) >= 2]


def perplexity(llm, token_ids: list[int], window: int) -> dict:
    """exp(mean negative log-likelihood) of every token after the first of each window, each window scored from
    its own start (the usual non-overlapping evaluation: the first token of a window has no context)."""
    chunks = windows(token_ids, window)
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    outputs = llm.generate([{"prompt_token_ids": chunk} for chunk in chunks], params, use_tqdm=False)
    nll, scored = 0.0, 0
    for chunk, output in zip(chunks, outputs, strict=True):
        for position in range(1, len(chunk)):
            nll -= output.prompt_logprobs[position][chunk[position]].logprob
            scored += 1
    return {"perplexity": math.exp(nll / scored), "mean_nll": nll / scored, "tokens_scored": scored,
            "windows": len(chunks)}


def greedy_answers(llm, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Each prompt's greedy answer (token ids), ending at EOS or after max_tokens."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [list(out.outputs[0].token_ids) for out in outputs]


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How many sequences are identical, and the mean fraction of each reference sequence that `other` repeats
    before its first different token."""
    fractions, identical = [], 0
    for ours, theirs in zip(reference, other, strict=True):
        prefix = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))
        fractions.append(prefix / max(1, len(ours)))
        identical += list(ours) == list(theirs)
    return {"sequences": len(fractions), "identical": identical,
            "mean_prefix_fraction": sum(fractions) / len(fractions) if fractions else None}


def llama_cpp_perplexity(gguf_file, token_ids: list[int], window: int, threads: int) -> dict:
    """The same perplexity from llama.cpp's logits on a GGUF file, in the same windows (llama_cpp.py)."""
    from .llama_cpp import perplexity_from_logits

    return perplexity_from_logits(gguf_file, windows(token_ids, window), threads)
