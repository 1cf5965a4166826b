"""The decoder-size planner: the exact search against brute force, the cost fit, the traffic log, the
live-rows record, and decoder_batch_sizes="auto" end to end on the tiny model."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from bucketserve.planner.arrivals import parse_arrival_model
from bucketserve.planner.cost_model import CostModel, StepSample, fit_cost_model, max_abs_error, synthetic_samples
from bucketserve.planner.live_rows import LiveRows, LiveRowsError, from_dict, from_prometheus
from bucketserve.planner.replay import EngineShape, replay
from bucketserve.planner.search import best_sizes, expected_seconds
from bucketserve.planner.strategies import exponential, linear
from bucketserve.planner.traffic_log import TrafficLogError, TrafficRecord, read_traffic_log, write_traffic_log


def _brute_force(distribution, cost, batch_size, max_decoders, graph_cost=None, budget=None):
    best = None
    for k in range(0, max_decoders):
        for smaller in itertools.combinations(range(1, batch_size), k):
            sizes = (*smaller, batch_size)
            if budget is not None and sum(graph_cost(s) for s in sizes) > budget:
                continue
            seconds = expected_seconds(sizes, distribution, cost)
            if best is None or seconds < best:
                best = seconds
    return best


@pytest.mark.parametrize("seed", range(12))
def test_search_matches_brute_force(seed):
    rng = random.Random(seed)
    batch_size = rng.randint(3, 9)
    distribution = LiveRows({n: rng.choice([0, rng.randint(1, 50)]) or 1 for n in range(1, batch_size + 1)
                             if rng.random() < 0.7} or {1: 3},
                            {n: rng.uniform(10, 400) for n in range(1, batch_size + 1)})
    cost = CostModel(rng.uniform(0, 3), rng.uniform(0.01, 2), rng.uniform(0, 0.01), floor=rng.choice([0.0, 4.0]))
    for max_decoders in (1, 2, 3, batch_size):
        choice = best_sizes(distribution, cost, batch_size, max_decoders)
        assert choice.sizes[0] == batch_size and len(choice.sizes) <= max_decoders
        assert choice.seconds == pytest.approx(expected_seconds(choice.sizes, distribution, cost))
        assert choice.seconds == pytest.approx(_brute_force(distribution, cost, batch_size, max_decoders))


@pytest.mark.parametrize("seed", range(6))
def test_search_under_a_budget_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    batch_size = 8
    distribution = LiveRows({n: rng.randint(1, 40) for n in range(1, batch_size + 1)})
    cost = CostModel(0.5, 1.0, 0.0)
    price = {s: rng.uniform(1, 10) for s in range(1, batch_size + 1)}
    budget = price[batch_size] + rng.uniform(0, 15)
    choice = best_sizes(distribution, cost, batch_size, 4, price.__getitem__, budget)
    assert choice.spent <= budget + 1e-9
    assert choice.seconds == pytest.approx(_brute_force(distribution, cost, batch_size, 4, price.__getitem__, budget))


def test_search_rejects_bad_input():
    distribution = LiveRows({1: 5, 6: 2})
    with pytest.raises(ValueError, match="max_decoders must be an integer >= 1, got 0"):
        best_sizes(distribution, CostModel(0, 1, 0), 8, 0)
    with pytest.raises(ValueError, match="6 live rows, more than batch_size 4"):
        best_sizes(distribution, CostModel(0, 1, 0), 4, 2)
    with pytest.raises(LiveRowsError, match="no decode steps"):
        LiveRows({1: 0})
    with pytest.raises(ValueError, match="no set of decoders fits the budget"):
        best_sizes(distribution, CostModel(0, 1, 0), 8, 2, lambda s: 10.0, 5.0)


def test_fit_recovers_synthetic_costs():
    true = CostModel(a=0.002, b=0.0004, c=3e-7, floor=0.003)
    samples = synthetic_samples(true, [1, 2, 4, 8, 16, 32], [64, 256, 512])
    fitted = fit_cost_model(samples)
    assert fitted.floor == pytest.approx(true.floor, rel=1e-6)
    assert (fitted.a, fitted.b, fitted.c) == pytest.approx((true.a, true.b, true.c), rel=1e-4)
    # Noisy samples still fit within their noise, and the held-out size is predicted within it too.
    rng = random.Random(0)
    noisy = [StepSample(s.batch, s.context, s.seconds * rng.uniform(0.97, 1.03)) for s in samples if s.batch != 16]
    held_out = [s for s in samples if s.batch == 16]
    assert max_abs_error(fit_cost_model(noisy), held_out) < 0.08


def test_fixed_strategies_follow_vllm_rbln():
    assert exponential(32, limit=3) == (32, 16, 8)
    assert exponential(8, limit=8) == (8, 4, 2, 1)
    assert linear(32, limit=3, step=10) == (32, 22, 12)


def test_traffic_log_round_trips(tmp_path):
    records = [TrafficRecord(1700000000.5, 12, 30, 4, 1700000002.25), TrafficRecord(1700000001.0, 7, 1)]
    path = tmp_path / "traffic.jsonl"
    write_traffic_log(path, records)
    assert read_traffic_log(path) == records


@pytest.mark.parametrize("line, message", [
    ("not json", r"traffic.jsonl:2: not a JSON object"),
    ('{"arrival_time": 1, "prompt_tokens": 5}', r"traffic.jsonl:2: missing field 'output_tokens'"),
    ('{"arrival_time": 1, "prompt_tokens": -5, "output_tokens": 3}', r"traffic.jsonl:2: prompt_tokens must be"),
    ('{"arrival_time": 1, "prompt_tokens": 200, "output_tokens": 100}', r"traffic.jsonl:2: the request holds 300 tokens.*max_model_len 256"),
])
def test_traffic_log_names_the_bad_line(tmp_path, line, message):
    path = tmp_path / "traffic.jsonl"
    path.write_text(TrafficRecord(1.0, 3, 4).to_json() + "\n" + line + "\n")
    with pytest.raises(TrafficLogError, match=message):
        read_traffic_log(path, max_model_len=256)


def test_empty_traffic_log_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(TrafficLogError, match="holds no requests"):
        read_traffic_log(path)


def test_replay_counts_the_live_rows_of_a_known_schedule():
    # Two requests at once, then a third long after: 2 rows for 3 steps, 1 row for 2 more, then 1 row for 4.
    records = [TrafficRecord(0.0, 5, 4), TrafficRecord(0.0, 5, 6), TrafficRecord(100.0, 5, 5)]
    shape = EngineShape(batch_size=4, max_model_len=64, kvcache_block_size=16, kvcache_num_blocks=17)
    result = replay(records, shape, [4, 1], CostModel(0.01, 0.001, 0.0))
    assert result.distribution.steps == {2: 3, 1: 2 + 4}
    assert result.decode_seconds == pytest.approx(3 * 0.014 + 6 * 0.011)


def test_prometheus_histogram_reads_back():
    text = ('bucketserve_decode_live_rows_bucket{le="1.0"} 5.0\n'
            'bucketserve_decode_live_rows_bucket{le="2.0"} 5.0\n'
            'bucketserve_decode_live_rows_bucket{le="3.0"} 9.0\n'
            'bucketserve_decode_live_rows_bucket{le="+Inf"} 9.0\n')
    assert from_prometheus(text).steps == {1: 5.0, 3: 4.0}


def test_distribution_and_arrival_specs_are_checked():
    assert from_dict({"1": 3, "4": 2}).steps == {1: 3, 4: 2}
    with pytest.raises(LiveRowsError, match="live rows 'x' is not an integer"):
        from_dict({"x": 3})
    with pytest.raises(ValueError, match="unknown field"):
        parse_arrival_model("poisson:rate=1,speed=3")
    trace = parse_arrival_model("bursts:rate=0.5,size=1-32,count=50,seed=3").generate()
    assert len(trace) == 50 and json.loads(trace[0].to_json())["prompt_tokens"] >= 32


# ---- the engine's record, the server's histogram and "auto", on the tiny model (eager) ----

def _engine(directory):
    from bucketserve.entrypoints.llm import LLM

    return LLM(model=str(directory)).llm_engine


def test_live_rows_count_exactly_what_a_known_schedule_runs(eager_dir):
    from bucketserve.engine.sampling_params import SamplingParams

    engine = _engine(eager_dir)
    # Three prompts prefilled together (each samples its first token there), then 3 rows decode for 2 steps,
    # 2 rows for 2 more, 1 row for 3 more: what the replay of the same trace predicts too.
    for i, max_tokens in enumerate((3, 5, 8)):
        engine.add_request(str(i), None, [5, 6, 7, 8], SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0))
    while engine.has_unfinished_requests():
        engine.step()
    stats = engine.get_stats()
    assert stats["live_rows"] == {3: 2, 2: 2, 1: 3}
    assert engine.step_stats.live_rows_per_decoder == {4: {3: 2, 2: 2}, 1: {1: 3}}  # decoders [8, 4, 1]
    shape = EngineShape.of(engine.executor.compile_config)
    trace = [TrafficRecord(0.0, 4, n) for n in (3, 5, 8)]
    assert replay(trace, shape, [8, 4, 1], CostModel(0.01, 0.001, 0.0)).distribution.steps == stats["live_rows"]

    # The server's /metrics histogram holds the same counts, one bucket per row count.
    from prometheus_client import CollectorRegistry, generate_latest

    from bucketserve.entrypoints.openai.metrics import _EngineStatsCollector

    registry = CollectorRegistry()
    registry.register(_EngineStatsCollector(type("Published", (), {"stats": stats})()))
    text = generate_latest(registry).decode()
    assert 'bucketserve_decode_live_rows_bucket{le="8.0"} 7.0' in text
    assert from_prometheus(text).steps == stats["live_rows"]


def test_the_server_appends_one_traffic_line_per_finished_request(eager_dir, tmp_path):
    """Through the server's engine thread: ServerMetrics(traffic_log=...) is what `serve --traffic-log` builds."""
    import asyncio

    from bucketserve.engine.async_engine import AsyncLLMEngine
    from bucketserve.engine.sampling_params import SamplingParams
    from bucketserve.entrypoints.llm import LLM
    from bucketserve.entrypoints.openai.metrics import ServerMetrics

    path = tmp_path / "traffic.jsonl"
    engine = AsyncLLMEngine(LLM(model=str(eager_dir)).llm_engine, observer=ServerMetrics(traffic_log=str(path)))

    async def main():
        engine.start(asyncio.get_running_loop())
        try:
            for request_id, max_tokens in (("a", 4), ("b", 7)):
                stream = await engine.add_request(request_id, None, [5, 6, 7],
                                                  SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0))
                async for _ in stream:
                    pass
        finally:
            await engine.shutdown()

    asyncio.run(main())
    records = read_traffic_log(path, max_model_len=256)
    assert [(r.prompt_tokens, r.output_tokens, r.cached_tokens) for r in records] == [(3, 4, 0), (3, 7, 0)]
    assert all(r.finish_time >= r.arrival_time for r in records)


def test_auto_picks_the_set_the_search_says(tiny_checkpoint):
    from bucketserve import AutoModelForCausalLM

    distribution = {"live_rows": {1: 50, 2: 40, 3: 10, 6: 5, 8: 20}, "context": 40}
    costs = {"decode": {"a": 0.001, "b": 0.002, "c": 1e-6, "floor": 0.0}}
    model = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, compiler="eager", batch_size=8, max_seq_len=256, kvcache_block_size=64,
        rbln_decoder_batch_sizes="auto", traffic=distribution, max_decoders=3, cost_table=costs)
    expected = best_sizes(from_dict(distribution), CostModel.from_dict(costs["decode"]), 8, 3)
    assert model.compile_config.decoder_batch_sizes == expected.sizes == (8, 3, 1)
    plan = model.manifest["decoder_plan"]
    assert plan["prediction"]["planned"]["sizes"] == [8, 3, 1]
    assert plan["inputs"]["max_decoders"] == 3 and plan["inputs"]["distribution"]["live_rows"]["8"] == 20


def test_auto_rejects_bad_input(tiny_checkpoint, tmp_path):
    from bucketserve import AutoModelForCausalLM

    costs = {"decode": {"a": 0.001, "b": 0.002, "c": 0.0}}
    common = dict(export=True, compiler="eager", batch_size=4, max_seq_len=128, decoder_batch_sizes="auto", cost_table=costs)
    with pytest.raises(ValueError, match="max_decoders must be an integer >= 1, got 0"):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, traffic={1: 3}, max_decoders=0, **common)
    with pytest.raises(ValueError, match="needs traffic="):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, **common)
    long_trace = tmp_path / "long.jsonl"
    write_traffic_log(long_trace, [TrafficRecord(0.0, 100, 10), TrafficRecord(1.0, 100, 50)])
    with pytest.raises(TrafficLogError, match=r"long.jsonl:2: the request holds 150 tokens.*max_model_len 128"):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, traffic=str(long_trace), **common)
    with pytest.raises(ValueError, match="traffic only apply with decoder_batch_sizes='auto'"):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", traffic={1: 3})


def test_plan_simulate_on_the_command_line(tmp_path, capsys):
    from bucketserve.entrypoints.cli import main
    from bucketserve.planner.cost_table import CostTable

    table = tmp_path / "costs.json"
    cost = CostModel(0.002, 0.0005, 1e-7, floor=0.003)
    CostTable(cost).save(table)
    spec = "bursts:rate=0.5,size=1-16,count=80,prompt=8-64,output=8-64,seed=1"
    assert main(["plan", "--simulate", spec, "--cost-table", str(table), "--batch-size", "16", "--max-seq-len", "256",
                 "--max-decoders", "2", "--trace-out", str(tmp_path / "trace.jsonl"), "--json", str(tmp_path / "plan.json")]) == 0
    out = capsys.readouterr().out
    shape = EngineShape(16, 256, 16, 16 * 16 + 1)
    distribution = replay(read_traffic_log(tmp_path / "trace.jsonl"), shape, range(1, 17), cost).distribution
    expected = best_sizes(distribution, cost, 16, 2).sizes
    assert f"planned (K<=2)           {list(expected)}" in out
    assert json.loads((tmp_path / "plan.json").read_text())["plan"]["planned"]["sizes"] == list(expected)
    assert main(["plan", "--simulate", spec, "--cost-table", str(table), "--batch-size", "16", "--max-decoders", "0"]) == 1
    assert "max_decoders must be an integer >= 1, got 0" in capsys.readouterr().err


def test_auto_without_a_cost_table_times_the_checkpoint_eagerly(tiny_checkpoint):
    from bucketserve import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, compiler="eager", batch_size=4, max_seq_len=128, kvcache_block_size=32,
        decoder_batch_sizes="auto", traffic="poisson:rate=5,count=12,prompt=4-20,output=4-20", max_decoders=2)
    plan = model.manifest["decoder_plan"]
    table = plan["inputs"]["cost_table"]
    assert table["fit"]["source"] == "eager" and table["fit"]["sizes"] == [1, 2, 4] and "held_out_max_abs_error" in table["fit"]
    assert model.compile_config.decoder_batch_sizes == tuple(plan["prediction"]["planned"]["sizes"])
    assert model.compile_config.decoder_batch_sizes[0] == 4 and len(model.compile_config.decoder_batch_sizes) <= 2


def test_compile_auto_on_the_command_line(tiny_checkpoint, tmp_path, capsys):
    from bucketserve.compiler.manifest import read_manifest
    from bucketserve.entrypoints.cli import main
    from bucketserve.planner.cost_table import CostTable

    table = tmp_path / "costs.json"
    cost = CostModel(0.001, 0.002, 0.0)
    CostTable(cost).save(table)
    distribution = tmp_path / "live_rows.json"
    distribution.write_text(json.dumps({"live_rows": {"1": 30, "2": 30, "5": 3, "8": 4}}))
    out = tmp_path / "planned"
    assert main(["compile", str(tiny_checkpoint), str(out), "--compiler", "eager", "--max-seq-len", "128",
                 "--decoder-batch-sizes", "auto", "--traffic", str(distribution), "--max-decoders", "3",
                 "--cost-table", str(table)]) == 0
    expected = best_sizes(from_dict(json.loads(distribution.read_text())), cost, 8, 3).sizes
    manifest = read_manifest(out)
    assert tuple(manifest["compile_config"]["decoder_batch_sizes"]) == expected
    assert manifest["decoder_plan"]["prediction"]["planned"]["sizes"] == list(expected)
    assert f"decoders {list(expected)}" in capsys.readouterr().out
