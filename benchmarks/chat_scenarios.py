"""The GGUF run's in-process scenarios on bucketserve's own systems, each run interleaved: every round runs each system once, in an order
that rotates from round to round, so a slow spell of the shared machine falls on all of them alike.

- batch 1: one chat prompt, `new_tokens` greedy tokens (int4/int8 against fp32);
- 8 concurrent: the seed's 8 large-group prompts at once, `new_tokens` each;
- the seed's groups: 1, 4 and 8 chats one group after another, each answer ending at its own EOS or at
  `new_tokens` (T10: [8, 4, 1] against [8], so a group steps down to smaller decoders as answers end).
"""
from __future__ import annotations

import statistics

from bucketserve.demo.prompts import CONVERSATION_GROUPS
from bucketserve.engine.sampling_params import SamplingParams

from .options import BenchOptions
from .scenarios import run_requests
from .workload import make_engine

WARMUP_TOKENS = 2


class Ours:
    """An LLMEngine over a loaded compiled directory: every prompt added at once (continuous batching on the
    smallest decoder that fits), greedy; its timings include the prompts' prefill."""

    def __init__(self, name: str, model, tokenizer):
        self.name, self.model = name, model
        self.engine = make_engine(model, tokenizer)

    def generate(self, prompts: list[list[int]], max_tokens: int, ignore_eos: bool) -> dict:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=ignore_eos)
        return run_requests(self.engine, prompts, params)

    def close(self) -> None:
        self.model.close()


def chat_prompt_ids(tokenizer, question: str) -> list[int]:
    """A user question as the model's chat template lays it out (its text alone for a model without one)."""
    messages = [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(question)


def seed_group_prompts(tokenizer) -> dict[str, list[list[int]]]:
    """The seed page's three conversation groups (1, 4 and 8 chats), keyed by their size."""
    groups = {str(len(conversations)): [chat_prompt_ids(tokenizer, c[0]["content"]) for c in conversations]
              for conversations in CONVERSATION_GROUPS.values()}
    return dict(sorted(groups.items(), key=lambda item: int(item[0])))


def interleaved(contestants: dict, run, repeats: int) -> dict:
    """{name: summary} of `run(contestant)` (a dict with seconds, output_tokens, token_ids) done `repeats` times
    per contestant, round by round; one untimed warm-up each first is the caller's (warm_up)."""
    names = list(contestants)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(run(contestants[name]))
    return {name: _summary(results) for name, results in runs.items()}


def _summary(runs: list[dict]) -> dict:
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    last = runs[-1]
    summary = {"runs_seconds": seconds, "median_seconds": median, "min_seconds": min(seconds),
               "requests": last["requests"], "output_tokens": last["output_tokens"],
               "output_tokens_per_second": last["output_tokens"] / median, "token_ids": last["token_ids"]}
    if "decode_steps_per_decoder" in last:
        summary["decode_steps_per_decoder"] = last["decode_steps_per_decoder"]
    if "groups" in last:
        summary["groups"] = {size: {k: v for k, v in group.items() if k != "token_ids"} for size, group in last["groups"].items()}
    return summary


def warm_up(contestants: dict, prompt: list[int]) -> None:
    for contestant in contestants.values():
        contestant.generate([prompt], WARMUP_TOKENS, ignore_eos=True)


def batch_one(contestants: dict, prompt: list[int], options: BenchOptions) -> dict:
    return interleaved(contestants, lambda c: c.generate([prompt], options.new_tokens, ignore_eos=True), options.repeats)


def concurrent(contestants: dict, prompts: list[list[int]], options: BenchOptions) -> dict:
    return interleaved(contestants, lambda c: c.generate(prompts, options.new_tokens, ignore_eos=True), options.repeats)


def seed_groups(contestants: dict, groups: dict[str, list[list[int]]], options: BenchOptions) -> dict:
    """Each round: the groups of 1, 4 and 8 one after another; a round's seconds are the three groups' sum."""

    def run(contestant) -> dict:
        results = {size: contestant.generate(prompts, options.new_tokens, ignore_eos=False) for size, prompts in groups.items()}
        return {"seconds": sum(r["seconds"] for r in results.values()), "requests": sum(r["requests"] for r in results.values()),
                "output_tokens": sum(r["output_tokens"] for r in results.values()),
                "token_ids": [t for r in results.values() for t in r["token_ids"]], "groups": results}

    return interleaved(contestants, run, options.repeats)
