"""The issue's targets T1-T6 (and T11-T12, from prefix_scenarios), judged from one run's results: each met (True), not met (False) or not
measured (None, with the reason)."""
from __future__ import annotations

from . import prefix_scenarios
from .artifacts import system_name
from .options import BUCKETS, GROUP_SIZES, SINGLE

COMPILED = (system_name(BUCKETS), system_name(SINGLE))
T3_MIN_RATIO = {"1": 5.0, "4": 3.0, "8": 3.0}


def _target(description: str, met, value, limit, detail) -> dict:
    return {"description": description, "met": met, "value": value, "limit": limit, "detail": detail}


def _not_measured(description: str, reason: str) -> dict:
    return _target(description, None, None, None, {"reason": reason})


def judge(results: dict) -> dict:
    return {"T1": _t1(results), "T2": _t2(results), "T3": _t3(results), "T4": _t4(results),
            "T5": _t5(results), "T6": _t6(results), **prefix_scenarios.judge(results)}


def _t1(results: dict) -> dict:
    text = "each compiled decoder's full-context step time <= 1.5x its memory-bandwidth floor"
    ratios = {f"{system} decoder {batch}": step["ratio_to_floor"]
              for system in COMPILED for batch, step in results["step_latency"].get(system, {}).items()}
    if not ratios:
        return _not_measured(text, "no compiled decoder was timed")
    worst = max(ratios.values())
    return _target(text, worst <= 1.5, worst, 1.5, ratios)


def _t2(results: dict) -> dict:
    text = "the seed's groups (1, 4, 8 requests) take <= 0.7x the time with [8, 4, 1] as with [8] alone"
    groups = results["groups"]
    if not all(s in groups and "total_seconds" in groups[s] for s in COMPILED):
        return _not_measured(text, "the groups scenario did not run for both decoder sets")
    ratio = groups[COMPILED[0]]["total_seconds"] / groups[COMPILED[1]]["total_seconds"]
    detail = {size: groups[COMPILED[0]][size]["seconds"] / groups[COMPILED[1]][size]["seconds"]
              for size in map(str, GROUP_SIZES)}
    return _target(text, ratio <= 0.7, ratio, 0.7, detail)


def _t3(results: dict) -> dict:
    text = "output tokens/s >= 5x HF eager generate at batch 1, >= 3x at 4 and 8, and ahead of llama.cpp at batch 1"
    groups, ours = results["groups"], results["groups"].get(COMPILED[0])
    hf = groups.get("hf")
    if ours is None or hf is None or "skipped" in hf:
        return _not_measured(text, (hf or {}).get("skipped", "HF transformers did not run"))
    detail, met = {}, True
    for size, minimum in T3_MIN_RATIO.items():
        ratio = ours[size]["output_tokens_per_second"] / hf[size]["output_tokens_per_second"]
        detail[f"vs hf eager, batch {size}"] = ratio
        met = met and ratio >= minimum
    llama_cpp = groups.get("llama.cpp")
    if llama_cpp is None or "skipped" in llama_cpp:
        detail["vs llama.cpp, batch 1"] = None
        detail["llama.cpp"] = (llama_cpp or {}).get("skipped", "not run")
        met = None if met else False
    else:
        ratio = ours["1"]["output_tokens_per_second"] / llama_cpp["1"]["output_tokens_per_second"]
        detail["vs llama.cpp, batch 1"] = ratio
        met = met and ratio > 1.0
    return _target(text, met, detail["vs hf eager, batch 1"], dict(T3_MIN_RATIO, llama_cpp=1.0), detail)


def _t4(results: dict) -> dict:
    text = "compiled decode steps >= 2x faster than the eager engine's (full context, same decoder batch)"
    compiled, eager = results["step_latency"].get(COMPILED[0]), results["step_latency"].get("eager")
    if not compiled or not eager:
        return _not_measured(text, "the eager engine's steps were not timed")
    detail = {f"decoder {b}": eager[b]["median_seconds"] / compiled[b]["median_seconds"] for b in compiled if b in eager}
    worst = min(detail.values())
    return _target(text, worst >= 2.0, worst, 2.0, detail)


def _t5(results: dict) -> dict:
    text = "loading a compiled directory takes <= 1/10 of compiling it"
    detail = {}
    for name in COMPILED:
        system = results["systems"].get(name)
        if system and system.get("compile_seconds_total"):
            detail[name] = system["load_seconds"] / system["compile_seconds_total"]
    if not detail:
        return _not_measured(text, "no compiled directory was loaded")
    worst = max(detail.values())
    return _target(text, worst <= 0.1, worst, 0.1, detail)


def _t6(results: dict) -> dict:
    text = "resident memory after load (and one call of every graph) <= 1.3x (weights + KV cache bytes)"
    memory = results["systems"].get(COMPILED[0], {}).get("memory")
    if not memory or "ratio" not in memory:
        return _not_measured(text, (memory or {}).get("error", "not measured"))
    return _target(text, memory["ratio"] <= 1.3, memory["ratio"], 1.3, memory)
