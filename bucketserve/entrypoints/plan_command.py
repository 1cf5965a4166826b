"""`bucketserve plan`: calibrate a compiled directory, plan its decoders from traffic, or simulate traffic.

    bucketserve plan calibrate MODEL_DIR [--traffic FILE]      # writes MODEL_DIR/bucketserve_cost_table.json
    bucketserve plan MODEL_DIR --traffic FILE [--max-decoders K] [--budget-compile-seconds S | --budget-graph-bytes B]
    bucketserve plan --simulate 'bursts:rate=0.3,size=1-32,count=300' [MODEL_DIR | --cost-table F --batch-size 32 ...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..planner.cost_table import COST_TABLE, CostTable, read_cost_table
from ..planner.live_rows import LiveRows
from ..planner.replay import EngineShape, replay
from ..planner.report import plan_report
from ..planner.search import expected_seconds


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", nargs="*", metavar="[calibrate] MODEL_DIR",
                   help="a compiled directory; 'calibrate MODEL_DIR' times its decoders and writes its cost table")
    p.add_argument("--traffic", help="a traffic log (serve --traffic-log), a live-rows .json, or an arrival model spec")
    p.add_argument("--simulate", metavar="SPEC", help="an arrival model: 'poisson:rate=2,count=200,prompt=32-128,"
                                                      "output=16-64' or 'bursts:rate=0.3,size=1-32,...'")
    p.add_argument("--max-decoders", type=int, default=3, help="K, decoders to compile at most (default 3)")
    p.add_argument("--cost-table", help=f"default: MODEL_DIR/{COST_TABLE}")
    p.add_argument("--budget-compile-seconds", type=float, help="the chosen graphs' compile seconds, at most")
    p.add_argument("--budget-graph-bytes", type=float, help="the chosen graphs' bytes, at most")
    p.add_argument("--held-out", type=int, help="calibrate: the decoder size left out of the fit and predicted "
                                                "(default: a middle one)")
    p.add_argument("--batch-size", type=int, help="--simulate without MODEL_DIR: the engine's shape")
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--trace-out", help="--simulate: write the generated trace here (a traffic log)")
    p.add_argument("--plot", help="write the time-per-token plot here (PNG)")
    p.add_argument("--json", help="write the plan here")


def run_plan(args: argparse.Namespace) -> None:
    target = list(args.target)
    if target and target[0] == "calibrate":
        if len(target) != 2:
            raise ValueError("usage: bucketserve plan calibrate MODEL_DIR")
        return _calibrate(Path(target[1]), args)
    if len(target) > 1:
        raise ValueError(f"plan takes one MODEL_DIR, got {target}")
    model_dir = Path(target[0]) if target else None
    if (args.traffic is None) == (args.simulate is None):
        raise ValueError("give one of --traffic FILE or --simulate SPEC")
    costs, shape, compiled = _costs_and_shape(model_dir, args)
    traffic = args.traffic or args.simulate
    from ..planner.traffic_source import live_rows_of, traffic_records

    records = traffic_records(traffic, shape.max_model_len)
    if args.simulate and args.trace_out:
        from ..planner.traffic_log import write_traffic_log

        write_traffic_log(args.trace_out, records)
        print(f"wrote the generated trace ({len(records)} requests) to {args.trace_out}")
    distribution = live_rows_of(records if records is not None else traffic, shape, costs)
    _print_distribution(distribution)
    graph_cost, budget, budget_name = _budget(args, costs)
    report = plan_report(distribution, costs.decode, shape.batch_size, args.max_decoders, compiled, graph_cost, budget,
                         budget_name)
    print(report.table())
    fit = costs.fit
    if fit:
        print(f"cost fit: max error {100 * fit.get('max_abs_error', float('nan')):.1f}% over the timed steps"
              + (f", {100 * fit['held_out_max_abs_error']:.1f}% on held-out decoder {fit['held_out']}"
                 if "held_out" in fit else ""))
    if compiled:
        _say_whether_recompiling_pays(report, compiled, distribution, costs, records, shape)
    if args.plot:
        from ..planner.plot import plot_time_per_token, report_series

        print(f"plot: {plot_time_per_token(report_series(report), args.plot, 'predicted decode time per token')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"distribution": distribution.to_dict(), "plan": report.to_dict()}, indent=2))


def _costs_and_shape(model_dir: Path | None, args) -> tuple[CostTable, EngineShape, tuple[int, ...] | None]:
    if model_dir is not None:
        from ..compiler.manifest import read_manifest
        from ..config import CompileConfig

        config = CompileConfig.from_dict(read_manifest(model_dir)["compile_config"])
        costs = read_cost_table(args.cost_table or model_dir / COST_TABLE)
        return costs, EngineShape.of(config), config.decoder_batch_sizes
    if args.cost_table is None or args.batch_size is None:
        raise ValueError("without MODEL_DIR, give --cost-table FILE and --batch-size N (and --max-seq-len)")
    shape = EngineShape(args.batch_size, args.max_seq_len, 16 if args.max_seq_len % 16 == 0 else args.max_seq_len,
                        args.batch_size * (args.max_seq_len // 16 if args.max_seq_len % 16 == 0 else 1) + 1)
    return read_cost_table(args.cost_table), shape, None


def _budget(args, costs: CostTable):
    if args.budget_compile_seconds is not None and args.budget_graph_bytes is not None:
        raise ValueError("give one budget: --budget-compile-seconds or --budget-graph-bytes")
    if args.budget_compile_seconds is not None:
        return costs.graphs.seconds_for, args.budget_compile_seconds, "compile seconds"
    if args.budget_graph_bytes is not None:
        return costs.graphs.bytes_for, args.budget_graph_bytes, "graph bytes"
    return None, None, None


def _print_distribution(distribution: LiveRows) -> None:
    steps = ", ".join(f"{rows}: {count:g}" for rows, count in sorted(distribution.steps.items()))
    print(f"live rows per decode step ({distribution.total_steps:g} steps, {distribution.total_tokens:g} tokens): {steps}")


def _say_whether_recompiling_pays(report, compiled, distribution, costs, records, shape) -> None:
    now = expected_seconds(compiled, distribution, costs.decode)
    planned = report.planned.seconds
    new_sizes = sorted(set(report.planned.sizes) - set(compiled), reverse=True)
    if not new_sizes or planned >= now * 0.99:
        print(f"keep the compiled decoders {list(compiled)}: the plan {list(report.planned.sizes)} would save "
              f"{100 * (1 - planned / now):.1f}% of decode time, not worth a recompile")
        return
    seconds = sum(costs.graphs.seconds_for(s) for s in new_sizes) if costs.graphs.compile_seconds else float("nan")
    line = (f"recompiling pays: decoders {list(report.planned.sizes)} instead of {list(compiled)} take "
            f"{planned / now:.2f}x the decode time ({100 * (1 - planned / now):.1f}% less)")
    if records is not None:
        measured_now = replay(records, shape, compiled, costs.decode, costs.prefill).decode_seconds
        measured_plan = replay(records, shape, report.planned.sizes, costs.decode, costs.prefill).decode_seconds
        line += f"; on this trace {measured_now:.1f} s -> {measured_plan:.1f} s of decode"
    print(line + f"; compiling {new_sizes} takes about {seconds:.0f} s "
                 f"(`bucketserve compile ... --decoder-batch-sizes {' '.join(map(str, report.planned.sizes))}`)")


def _calibrate(model_dir: Path, args) -> None:
    from ..modeling import AutoModelForCausalLM
    from ..planner.calibration import calibrate, contexts_from_trace
    from ..planner.traffic_source import traffic_records

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = model.compile_config
    records = traffic_records(args.traffic, config.max_seq_len) if args.traffic else None
    sizes = sorted(config.decoder_batch_sizes)
    held_out = args.held_out if args.held_out is not None else (sizes[len(sizes) // 2] if len(sizes) >= 3 else None)
    contexts = contexts_from_trace(records, config.max_seq_len)
    print(f"timing decoders {sizes} at contexts {contexts} (held out of the fit: {held_out})")
    table = calibrate(model, contexts, held_out)
    out = Path(args.cost_table or model_dir / COST_TABLE)
    table.save(out)
    d = table.decode
    print(f"step seconds = max({d.floor:.5f}, {d.a:.5f} + {d.b:.6f} * rows + {d.c:.3e} * rows * context)")
    print(f"fit: max error {100 * table.fit['max_abs_error']:.1f}%, mean {100 * table.fit['mean_abs_error']:.1f}%"
          + (f"; held-out decoder {held_out}: {100 * table.fit['held_out_max_abs_error']:.1f}% at worst"
             if held_out is not None else ""))
    print(f"prefill seconds = {table.prefill.per_call:.5f} + {table.prefill.per_token:.3e} * tokens")
    print(f"wrote {out}")
