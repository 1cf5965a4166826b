"""The terminal table and the JSON file of one run."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import prefix_scenarios
from .options import GROUP_SIZES

GB = 1e9

PARTIAL_FILE = "bench.partial.json"  # rewritten after every scenario, so a run cut short keeps its figures


def command_line() -> str | None:
    """The command that started this run, when it came through our CLI (console script or `python -m`)."""
    if sys.argv and sys.argv[0].endswith(("bucketserve", "entrypoints/cli.py")):
        return " ".join(["bucketserve"] + sys.argv[1:])
    if sys.argv and sys.argv[0].endswith("benchmarks/__main__.py"):
        return " ".join(["python -m benchmarks"] + sys.argv[1:])
    return None


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1000:8.1f}"


def _rate(value) -> str:
    return "-" if value is None else f"{value:8.1f}"


def _met(met) -> str:
    return {True: "met", False: "NOT MET", None: "not measured"}[met]


def _value(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def format_table(results: dict) -> str:
    options, machine, bandwidth = results["options"], results["machine"], results["memory_bandwidth"]
    lines = [
        f"bucketserve bench: {options['shape']} {options['dtype']}, max_seq_len {options['max_seq_len']}, "
        f"prompt {options['prompt_len']} + {options['new_tokens']} new tokens, {machine['threads']} threads on "
        f"{machine['processor']} ({machine['logical_cores']} cores), torch {machine['torch']}",
        f"memory read bandwidth: {bandwidth['bytes_per_second'] / GB:.2f} GB/s over {bandwidth['buffer_bytes'] / GB:.2f} GB",
        "",
        "1. decode step at full context        step ms    floor ms   x floor   weights MB  KV MB",
    ]
    for system, steps in results["step_latency"].items():
        for batch, step in steps.items():
            lines.append(f"   {system:12s} decoder {batch:>2s}        {_ms(step['median_seconds'])}   "
                         f"{_ms(step['floor_seconds'])}   {step['ratio_to_floor']:6.2f}   "
                         f"{step['weight_bytes'] / 1e6:9.1f}  {step['kv_bytes'] / 1e6:6.1f}")
    lines += ["", "2. seed groups: seconds (output tok/s)   " + "   ".join(f"{s:>17d} req" for s in GROUP_SIZES) + "       total s"]
    for system, groups in results["groups"].items():
        if "skipped" in groups:
            lines.append(f"   {system:12s} skipped: {groups['skipped']}")
            continue
        cells = [f"{groups[str(s)]['seconds']:8.2f} ({groups[str(s)]['output_tokens_per_second']:7.1f})" for s in GROUP_SIZES]
        total = groups.get("total_seconds", sum(groups[str(s)]["seconds"] for s in GROUP_SIZES))
        lines.append(f"   {system:12s}                  " + "   ".join(f"{c:>21s}" for c in cells) + f"   {total:8.2f}")
    llama_cpp = results["groups"].get("llama.cpp")
    if results["options"]["dtype"] != "float32" and llama_cpp and "skipped" not in llama_cpp:
        lines.append(f"   (llama.cpp reads GGUF F32 weights; the other systems ran {results['options']['dtype']})")
    arrivals = results.get("arrivals", {})
    if arrivals:
        lines += ["", f"3. arrivals ({arrivals['schedule']['requests']} requests)   tok/s    TTFT p50/p90 ms    "
                      f"TPOT p50/p90 ms   steps per decoder"]
        for system, run in arrivals.items():
            if system == "schedule":
                continue
            ttft, tpot = run["ttft_seconds"], run["time_per_output_token_seconds"]
            steps = ", ".join(f"{b}: {n}" for b, n in run["decode_steps_per_decoder"].items())
            lines.append(f"   {system:12s}        {_rate(run['output_tokens_per_second'])}  {_ms(ttft['p50'])}/{_ms(ttft['p90'])}"
                         f"  {_ms(tpot['p50'])}/{_ms(tpot['p90'])}   {steps}")
    lines += ["", "4. compile and load                     compile s (per graph)                       load s   RSS/needed"]
    for system, info in results["systems"].items():
        per_graph = ", ".join(f"{g}: {s:.1f}" for g, s in info.get("compile_seconds", {}).items()) or "-"
        memory = info.get("memory", {})
        ratio = f"{memory['ratio']:.2f}" if "ratio" in memory else "-"
        lines.append(f"   {system:12s} {per_graph:58s} {info['load_seconds']:7.2f}   {ratio}")
    lines += _tensor_parallel_lines(results.get("tensor_parallel", {}))
    lines += prefix_scenarios.report_lines(results)
    agreement = results.get("greedy_agreement", {})
    if agreement:
        lines += ["", "greedy tokens equal to [8, 4, 1]'s (fraction of tokens before the first difference): "
                  + ", ".join(f"{s} {a['mean_prefix_fraction']:.2f}" for s, a in agreement.items())]
    if results.get("skipped"):
        lines += [""] + [f"skipped {name}: {reason}" for name, reason in results["skipped"].items()]
    lines += ["", "targets"]
    for name, target in results["targets"].items():
        lines.append(f"   {name} {_met(target['met']):12s} value {_value(target['value'])} (limit {_value(target['limit']) if not isinstance(target['limit'], dict) else target['limit']}): {target['description']}")
    return "\n".join(lines)


def _tensor_parallel_lines(sizes: dict) -> list[str]:
    """Section 5: each size's step time per decoder, and TP=1's over it (above 1: faster than one process)."""
    if not sizes:
        return []
    decoders = next((list(s["step_latency"]) for s in sizes.values() if "step_latency" in s), [])
    lines = ["", "5. tensor parallelism: step ms at full context per decoder, "
             + " vs ".join(f"TP={n}" for n in sizes) + " (speed-up over TP=1)",
             "   ranks  threads/rank " + "".join(f"   decoder {b:>2s}      " for b in decoders)]
    for size, run in sizes.items():
        if "skipped" in run:
            lines.append(f"   {size:>5s}  skipped: {run['skipped']}")
            continue
        speedup = run.get("speedup", {})
        cells = [_ms(run["step_latency"][b]["median_seconds"]) + (f" ({speedup[b]:4.2f}x)" if b in speedup else " " * 8)
                 for b in decoders]
        lines.append(f"   {size:>5s}  {run['threads_per_rank']:12d} " + "".join(f"   {c:16s}" for c in cells))
    return [line.rstrip() for line in lines]


def write_json(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def finish_run(results: dict, seconds: float, path: Path, table: str) -> None:
    """A finished run: its time and the load at its end recorded, its JSON written (the partial file it replaces
    removed), its table and files printed."""
    results["bench_seconds"] = seconds
    results["machine"]["load_average_at_end"] = os.getloadavg()
    write_json(results, path)
    (path.parent / PARTIAL_FILE).unlink(missing_ok=True)
    print(table)
    print(f"\nresults: {path}" + "".join(f", {p}" for p in results.get("plots", [])))


# The GGUF run's tables (--real and --accuracy) ------------------------------------------------------------
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
    for number, (scenario, title) in enumerate((("batch_1", "batch 1"), ("concurrent_8", "8 concurrent requests"),
                                                ("seed_groups", "the seed's groups 1, 4, 8 (answers end at EOS)")), start=2):
        if results[scenario]:
            lines += ["", f"{number}. {title}: seconds (output tok/s)"]
            for system, run in results[scenario].items():
                lines.append(f"   {system:20s} {run['median_seconds']:8.2f} ({_rate(run['output_tokens_per_second'])})"
                             f"   {run['output_tokens']} tokens")
    lines += _versus_lines(results)
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


def _served_cell(run: dict) -> str:
    if "skipped" in run:
        return "skipped"
    ttft, itl = run["ttft_seconds"], run["inter_token_seconds"]
    return (f"{run['output_tokens_per_second']:7.1f} tok/s  TTFT p50/p99 {_ms(ttft['p50'])}/{_ms(ttft['p99'])} ms  "
            f"ITL p50/p99 {_ms(itl['p50'])}/{_ms(itl['p99'])} ms")


def _versus_lines(results: dict) -> list[str]:
    """Served (per user count), offline and engine-to-engine figures of each quantization against llama.cpp."""
    lines = []
    for quantization, served in results.get("served", {}).items():
        lines += ["", f"served over HTTP, {quantization} (llama.cpp: the same file at the same bits), median of "
                      f"{results['options']['repeats']} alternating rounds"]
        for system, runs in served.items():
            if "skipped" in runs:
                lines.append(f"   {system:18s} skipped: {runs['skipped']}")
                continue
            for users, run in runs.items():
                lines.append(f"   {system:18s} {users:>2s} users  {_served_cell(run)}" + (
                    f"  skipped: {run['skipped']}" if "skipped" in run else ""))
        offline = results.get("offline", {}).get(quantization, {})
        for users, run in offline.items():
            lines.append(f"   {'LLM.chat offline':18s} {users:>2s} users  {run['output_tokens_per_second']:7.1f} tok/s")
        engine = results.get("engine", {}).get(quantization, {})
        if engine:
            lines.append(f"   engine to engine, {quantization}:")
            for system, figures in engine.items():
                if "skipped" in figures:
                    lines.append(f"      {system:26s} skipped: {figures['skipped']}")
                    continue
                cells = [f"{name} {_rate(value.get('tokens_per_second', value.get('generation_tokens_per_second')))}"
                         for name, value in figures.items() if isinstance(value, dict)]
                lines.append(f"      {system:26s} " + "  ".join(c.replace("  ", " ") for c in cells) + " tok/s")
    return lines
