"""`bucketserve bench --quick`: the smoke run CI does. Checks the JSON has every figure; never a timing."""
from __future__ import annotations

import json
import sys

import pytest

from bucketserve.entrypoints.cli import build_parser

TARGETS = ("T1", "T2", "T3", "T4", "T5", "T6", "T11", "T12")
SYSTEMS = ("[8, 4, 1]", "[8]")
GROUPS = ("1", "4", "8")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `bucketserve bench --quick` for the module, run through the CLI's own parser."""
    root = tmp_path_factory.mktemp("bench")
    args = build_parser().parse_args(
        ["bench", "--quick", "--cache-dir", str(root / "cache"), "--out-dir", str(root / "out")])
    returned = args.func(args)
    return returned, json.loads((root / "out" / "bench.json").read_text()), root


def test_quick_run_writes_every_figure(quick_run):
    returned, results, _ = quick_run
    assert returned["targets"].keys() == results["targets"].keys()
    for key in ("options", "machine", "memory_bandwidth", "systems", "step_latency", "groups", "arrivals",
                "greedy_agreement", "profile", "targets", "bench_seconds"):
        assert key in results, key
    assert {"logical_cores", "threads", "torch", "processor"} <= results["machine"].keys()
    assert results["memory_bandwidth"]["bytes_per_second"] > 0


def test_compiled_systems_report_compile_load_and_memory(quick_run):
    _, results, _ = quick_run
    for name in SYSTEMS:
        system = results["systems"][name]
        assert set(system["compile_seconds"]) == {"prefill"} | {f"decoder_batch_{b}" for b in system["decoder_batch_sizes"]}
        assert system["load_seconds"] > 0 and system["weight_bytes"] > 0 and system["kv_cache_bytes"] > 0
        assert {"rss_after_load_bytes", "rss_after_steps_bytes", "needed_bytes", "ratio", "ratio_after_load"} <= system["memory"].keys()


def test_step_latency_has_a_floor_per_decoder(quick_run):
    _, results, _ = quick_run
    assert set(results["step_latency"]["[8, 4, 1]"]) == {"8", "4", "1"}
    assert set(results["step_latency"]["[8]"]) == {"8"}
    for decoders in results["step_latency"].values():
        for step in decoders.values():
            assert step["context_len"] == results["options"]["max_seq_len"]
            for field in ("median_seconds", "floor_seconds", "ratio_to_floor", "weight_bytes", "kv_bytes"):
                assert step[field] > 0, field


def test_groups_and_arrivals_count_every_token(quick_run):
    _, results, _ = quick_run
    new_tokens = results["options"]["new_tokens"]
    for name in SYSTEMS + ("eager", "hf"):
        for size in GROUPS:
            group = results["groups"][name][size]
            assert group["output_tokens"] == int(size) * new_tokens
            assert group["output_tokens_per_second"] > 0
    # [8, 4, 1] runs each group on the smallest decoder that fits; [8] always on 8.
    assert results["groups"]["[8, 4, 1]"]["1"]["decode_steps_per_decoder"] == {"8": 0, "4": 0, "1": new_tokens - 1}
    assert results["groups"]["[8]"]["1"]["decode_steps_per_decoder"] == {"8": new_tokens - 1}
    requests = results["arrivals"]["schedule"]["requests"]
    for name in SYSTEMS:
        run = results["arrivals"][name]
        assert run["requests"] == requests and run["output_tokens"] == requests * new_tokens
        for field in ("ttft_seconds", "time_per_output_token_seconds"):
            assert {"mean", "p50", "p90", "max"} <= run[field].keys()


def test_peers_run_or_say_why_not(quick_run):
    _, results, _ = quick_run
    llama_cpp = results["groups"]["llama.cpp"]
    assert "skipped" in llama_cpp or set(GROUPS) <= llama_cpp.keys()
    assert "hf-static" not in results["groups"]  # --quick leaves the slow peer out
    # Same weights, same prompts, greedy: the peers that ran agree with [8, 4, 1] token for token.
    for name, agreement in results["greedy_agreement"].items():
        assert agreement["identical"] == agreement["sequences"], name


def test_every_target_is_judged(quick_run):
    _, results, _ = quick_run
    assert tuple(results["targets"]) == TARGETS
    for name, target in results["targets"].items():
        assert target["met"] in (True, False, None), name
        assert {"description", "value", "limit", "detail"} <= target.keys()
        if name != "T3" or "skipped" not in results["groups"]["llama.cpp"]:
            assert target["met"] is not None, name


def test_profile_splits_a_decode_step(quick_run):
    _, results, _ = quick_run
    for decoder in results["profile"]["decoders"].values():
        assert {"graph_seconds", "runtime_host_seconds", "graph_short_context_seconds", "context_seconds",
                "gemm_matmul_seconds"} <= decoder.keys()
        assert decoder["short_context_len"] <= decoder["context_len"]
        assert {"matmul_seconds", "attention_seconds"} <= decoder["eager"].keys()
    assert {"step_seconds", "decode_seconds", "sampling_seconds", "engine_python_seconds"} <= results["profile"]["engine_step"].keys()


def test_tensor_parallel_step_latency_per_decoder_or_a_reason(quick_run):
    _, results, _ = quick_run
    assert results["options"]["tensor_parallel_sizes"] == [1, 2]  # --quick keeps the comparison
    sizes = results["tensor_parallel"]
    assert set(sizes) == {"1", "2"} or (set(sizes) == {"2"} and "skipped" in sizes["2"])
    for size, run in sizes.items():
        if "skipped" in run:
            assert run["skipped"] and "TP=" + size in results["skipped"]["tensor_parallel"]
            continue
        assert run["threads_per_rank"] >= 1
        assert set(run["step_latency"]) == {"8", "4", "1"}
        for step in run["step_latency"].values():
            assert step["median_seconds"] > 0 and step["context_len"] == results["options"]["max_seq_len"]
        if size != "1":
            assert set(run["speedup"]) == {"8", "4", "1"} and all(s > 0 for s in run["speedup"].values())


def test_tp_sizes_option():
    from benchmarks.options import build_options

    def sizes(*argv):
        return build_options(build_parser().parse_args(["bench", "--quick", *argv])).tensor_parallel_sizes

    assert sizes() == (1, 2)
    assert sizes("--tp-sizes", "1") == (1,)
    assert sizes("--tp-sizes", "4", "2") == (1, 2, 4)  # TP=1 is always the reference
    with pytest.raises(ValueError, match="--tp-sizes"):
        sizes("--tp-sizes", "0")


@pytest.mark.parametrize("flag", ["--prompt-len", "--new-tokens", "--step-repeats", "--arrival-requests", "--threads"])
def test_counts_below_one_are_refused_before_anything_runs(flag):
    from benchmarks.options import build_options

    with pytest.raises(ValueError, match=f"{flag} must be >= 1, got 0"):
        build_options(build_parser().parse_args(["bench", "--quick", flag, "0"]))


def test_an_unknown_shape_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--shape", "nosuch"])
    assert "invalid choice: 'nosuch'" in capsys.readouterr().err


def test_demo_rebuild_removes_only_what_the_demo_wrote(tmp_path):
    from bucketserve.demo.build import remove_built

    for built in ("checkpoint", "compiled", "mywork"):
        (tmp_path / built).mkdir()
        (tmp_path / built / "file").write_text("x")
    (tmp_path / "options.json").write_text("{}")
    (tmp_path / "README").write_text("the user's")
    remove_built(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README", "mywork"]


def test_plots_written_or_skipped_with_a_reason(quick_run):
    _, results, root = quick_run
    if "plots" in results["skipped"]:
        assert "matplotlib" in results["skipped"]["plots"] and not results["plots"]
    else:
        assert sorted(p.rsplit("/", 1)[-1] for p in results["plots"]) == ["step_time_vs_floor.png", "tokens_per_second.png"]


def test_missing_matplotlib_skips_plots(monkeypatch):
    from benchmarks import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert "matplotlib is not installed" in plots.matplotlib_missing()


@pytest.mark.parametrize("argv0, recorded", [
    ("/venv/bin/bucketserve", True), ("/repo/bucketserve/entrypoints/cli.py", True), ("pytest", False),
])
def test_the_command_line_is_recorded_when_run_through_the_cli(monkeypatch, argv0, recorded):
    from benchmarks.report import command_line

    monkeypatch.setattr(sys, "argv", [argv0, "bench", "--quick"])
    assert command_line() == ("bucketserve bench --quick" if recorded else None)
