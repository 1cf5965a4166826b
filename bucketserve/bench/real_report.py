"""The terminal tables of the real-model mode (--real and --accuracy)."""
from __future__ import annotations

from . import prefix_scenarios
from .report import GB, _met, _ms, _rate, _value


def _header(results: dict) -> list[str]:
    options, machine = results["options"], results["machine"]
    return [f"bucketserve bench --{results['mode']}: {results['model']['file']}, max_seq_len {options['max_seq_len']}, "
            f"{options['new_tokens']} new tokens, {machine['threads']} threads on {machine['processor']} "
            f"({machine['logical_cores']} cores), torch {machine['torch']}"]


def _compact(value) -> str:
    """A target's detail on one line: floats to 3 significant digits."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _targets(results: dict) -> list[str]:
    lines = ["", "targets"]
    for name, target in results["targets"].items():
        limit = target["limit"]
        lines.append(f"   {name:10s} {_met(target['met']):12s} value {_value(target['value'])} (limit {_value(limit)}): "
                     f"{target['description']}")
        if target["met"] is not True:
            lines.append(f"              why: {_compact(target['detail'])}")
    if results.get("skipped"):
        lines += [""] + [f"skipped {name}: {reason}" for name, reason in results["skipped"].items()]
    return lines


def format_speed(results: dict) -> str:
    bandwidth = results["memory_bandwidth"]
    lines = _header(results) + [
        f"memory read bandwidth: {bandwidth['bytes_per_second'] / GB:.2f} GB/s; every timing the median of "
        f"{results['options']['repeats']} interleaved rounds",
        "", "1. decode step at full context        step ms    floor ms   x floor   weights MB  KV MB"]
    for system, steps in results["step_latency"].items():
        for batch, step in steps.items():
            lines.append(f"   {system:16s} decoder {batch:>2s}    {_ms(step['median_seconds'])}   "
                         f"{_ms(step['floor_seconds'])}   {step['ratio_to_floor']:6.2f}   "
                         f"{step['weight_bytes'] / 1e6:9.1f}  {step['kv_bytes'] / 1e6:6.1f}")
    for number, (scenario, title) in enumerate((("batch_1", "batch 1"), ("concurrent_8", "8 concurrent requests (llama.cpp: one after another)"),
                                                ("seed_groups", "the seed's groups 1, 4, 8 (answers end at EOS)")), start=2):
        if results[scenario]:
            lines += ["", f"{number}. {title}: seconds (output tok/s)"]
            for system, run in results[scenario].items():
                lines.append(f"   {system:20s} {run['median_seconds']:8.2f} ({_rate(run['output_tokens_per_second'])})"
                             f"   {run['output_tokens']} tokens")
    agreement = results.get("greedy_agreement", {})
    if agreement:
        lines += ["", "greedy tokens equal to llama.cpp's on the same file (fraction before the first difference): "
                  + ", ".join(f"{name} {a['mean_prefix_fraction']:.2f}" for name, a in agreement.items())]
    lines += prefix_scenarios.report_lines(results)
    return "\n".join(lines + _targets(results))


def format_accuracy(results: dict) -> str:
    text = results["text"]
    lines = _header(results) + [f"perplexity on {text['file']} ({text['tokens']} of its {text['text_tokens']} tokens, "
                                f"windows of {text['window_tokens']})"]
    for name, ppl in results["perplexity"].items():
        agreement = results["greedy_agreement"].get(name)
        same = "" if agreement is None else (f"   greedy answers identical to fp32's: {agreement['identical']}/{agreement['sequences']}"
                                             f" (prefix fraction {agreement['mean_prefix_fraction']:.2f})")
        peer = results.get("llama_cpp_perplexity", {}).get(name)
        peer = "" if peer is None else f"   llama.cpp on {peer['file']}: {peer['perplexity']:.3f}"
        lines.append(f"   {name:5s} {ppl['perplexity']:9.3f}{peer}{same}")
    return "\n".join(lines + _targets(results))
