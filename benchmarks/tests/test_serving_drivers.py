"""The pieces the served and engine-to-engine comparisons stand on, without llama.cpp: the streaming client against
our own server (every token counted, latencies measured), llama.cpp's output parsed from stand-in binaries that
print what the real ones print, a missing binary named with the fix, and every server the bench starts stopped.
Never a timing."""
from __future__ import annotations

import socket
import stat
import sys
import textwrap

import pytest

from benchmarks import llama_cpp, servers, streaming_client


def test_percentile_interpolates_between_ranks():
    assert streaming_client.percentile([], 50) is None
    assert streaming_client.percentile([3.0], 99) == 3.0
    assert streaming_client.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert streaming_client.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0


@pytest.fixture(scope="module")
def eager_model_dir(tmp_path_factory):
    """A tiny random checkpoint built uncompiled (max_seq_len 64, decoders [4, 1])."""
    from bucketserve import AutoModelForCausalLM
    from bucketserve.demo.checkpoint import build_random_checkpoint

    root = tmp_path_factory.mktemp("serving-drivers")
    checkpoint = build_random_checkpoint(root / "checkpoint", shape="tiny", seed=5)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, batch_size=4, max_seq_len=64,
                                                 decoder_batch_sizes=[4, 1], prefill_chunk_size=16, compiler="eager")
    model.save_pretrained(root / "compiled")
    return root / "compiled"


def test_the_streaming_client_counts_every_token_of_every_user(eager_model_dir):
    from benchmarks.soak import serve_in_thread

    conversations = [[{"role": "user", "content": text}] for text in ("hello there", "count to three", "why")]
    with serve_in_thread(eager_model_dir) as (base_url, _):
        run = streaming_client.drive(base_url, "soak", conversations, users=3, requests_per_user=2, max_tokens=5)
    assert (run["users"], run["requests"], run["output_tokens"]) == (3, 6, 30)  # ignore_eos: max_tokens each
    assert run["output_tokens_per_second"] == pytest.approx(30 / run["seconds"])
    assert 0 < run["ttft_seconds"]["p50"] <= run["ttft_seconds"]["p99"] < run["seconds"]
    assert 0 < run["inter_token_seconds"]["p50"] <= run["inter_token_seconds"]["p99"]
    assert run["prompt_tokens"] > 0
    with pytest.raises(ValueError, match="users and requests per user must be >= 1, got 0 and 1"):
        streaming_client.drive(base_url, "soak", conversations, users=0, requests_per_user=1, max_tokens=5)


def _stand_in(folder, name: str, output: str, exit_code: int = 0):
    """An executable `name` in folder that prints `output` (as the real binary's stdout) and exits exit_code."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport sys\nsys.stdout.write({output!r})\nsys.exit({exit_code})\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


LLAMA_BENCH_JSON = """[
  {"n_prompt": 512, "n_gen": 0, "n_threads": 2, "avg_ts": 787.5, "stddev_ts": 3.1},
  {"n_prompt": 0, "n_gen": 128, "n_threads": 2, "avg_ts": 158.25, "stddev_ts": 0.5}
]
"""
BATCHED_BENCH_JSONL = "\n".join([
    "main: n_kv_max = 4096, n_batch = 2048",
    '{"n_kv_max": 4096, "pp": 128, "tg": 128, "pl": 1, "n_kv": 256, "t_pp": 0.2, "speed_pp": 640.0, "t_tg": 0.8, "speed_tg": 160.0, "t": 1.0, "speed": 256.0}',
    '{"n_kv_max": 4096, "pp": 128, "tg": 128, "pl": 8, "n_kv": 2048, "t_pp": 1.5, "speed_pp": 682.7, "t_tg": 2.9, "speed_tg": 351.0, "t": 4.4, "speed": 465.5}',
]) + "\n"


def test_llama_bench_and_batched_bench_output_is_read_with_the_command(tmp_path):
    _stand_in(tmp_path, llama_cpp.BENCH, LLAMA_BENCH_JSON)
    _stand_in(tmp_path, llama_cpp.BATCHED_BENCH, BATCHED_BENCH_JSONL)
    bench = llama_cpp.llama_bench(tmp_path, tmp_path / "m.gguf", threads=2)
    assert bench["pp512"]["tokens_per_second"] == 787.5 and bench["tg128"]["tokens_per_second"] == 158.25
    assert bench["command"].split()[1:] == ["-m", str(tmp_path / "m.gguf"), "-t", "2", "-p", "512", "-n", "128",
                                            "-r", "3", "-o", "json"]
    batched = llama_cpp.batched_bench(tmp_path, tmp_path / "m.gguf", threads=2, batches=(1, 8))
    assert batched["B=8"]["generation_tokens_per_second"] == 351.0 and batched["B=1"]["seconds"] == 1.0
    assert "-npl 1,8,1" in batched["command"] and "-c 2048" in batched["command"]  # 8 x (128 + 128)
    with pytest.raises(llama_cpp.LlamaCppFailed, match=r"printed no JSON line for B = \[16\]"):
        llama_cpp.batched_bench(tmp_path, tmp_path / "m.gguf", threads=2, batches=(1, 8, 16))


def test_a_failing_or_missing_binary_is_a_reason(tmp_path, monkeypatch):
    _stand_in(tmp_path, llama_cpp.BENCH, "error: unknown model architecture\n", exit_code=1)
    with pytest.raises(llama_cpp.LlamaCppFailed, match="exited 1: error: unknown model architecture"):
        llama_cpp.llama_bench(tmp_path, tmp_path / "m.gguf", threads=2)
    with pytest.raises(llama_cpp.LlamaCppMissing, match=f"llama-server is not in --llama-bin {tmp_path}; build llama.cpp"):
        llama_cpp.server_command(tmp_path, tmp_path / "m.gguf", 8080, users=8, threads=2, context_per_user=1024)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(llama_cpp.LlamaCppMissing, match="llama-batched-bench is not on PATH and no --llama-bin was given"):
        llama_cpp.batched_bench(None, tmp_path / "m.gguf", threads=2)
    assert llama_cpp.find_binary(llama_cpp.BENCH, None) == tmp_path / llama_cpp.BENCH  # PATH when no --llama-bin


def test_llama_server_runs_as_users_run_it(tmp_path):
    _stand_in(tmp_path, llama_cpp.SERVER, "")
    command = llama_cpp.server_command(tmp_path, tmp_path / "m.gguf", 8080, users=8, threads=2, context_per_user=1024)
    assert command[command.index("-np") + 1] == "8" and command[command.index("-c") + 1] == str(8 * 1024)
    assert command[command.index("-t") + 1] == command[command.index("-tb") + 1] == "2"
    assert "--cont-batching" in command and command[command.index("--host") + 1] == "127.0.0.1"


HEALTH_SERVER = textwrap.dedent("""
    import http.server, sys
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
""")


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_every_server_started_is_stopped(tmp_path):
    port = servers.free_port()
    command = [sys.executable, "-c", HEALTH_SERVER, str(port)]
    with servers.running("stand-in", command, port, tmp_path / "server.log") as base_url:
        assert base_url == f"http://127.0.0.1:{port}" and _answers(port)
    assert not _answers(port)
    with pytest.raises(RuntimeError, match="boom"), servers.running("stand-in", command, port, tmp_path / "server.log"):
        raise RuntimeError("boom")  # an error inside the block still stops it
    assert not _answers(port)
    assert f"$ {' '.join(command)}" in (tmp_path / "server.log").read_text()


def test_a_server_that_exits_before_it_answers_names_its_log(tmp_path):
    log = tmp_path / "server.log"
    with pytest.raises(RuntimeError, match=f"stand-in exited 3 before it answered /health; see {log}"):
        with servers.running("stand-in", [sys.executable, "-c", "raise SystemExit(3)"], servers.free_port(), log):
            pass


def test_a_ratio_target_is_judged_from_its_figures_or_says_which_is_missing():
    from benchmarks.targets import VERSUS_LLAMA_CPP, judge_ratio

    t7 = next(t for t in VERSUS_LLAMA_CPP if t.name == "T7")
    served = {"bucketserve serve": {"1": {"output_tokens_per_second": 150.0}}, "llama-server": {"1": {"output_tokens_per_second": 100.0}}}
    results = {"skipped": {}, "served": {"int4": served, "int8": {"bucketserve serve": {"1": {"output_tokens_per_second": 90.0}},
                                                                   "llama-server": {"skipped": "llama-server is not on PATH"}}}}
    judged = judge_ratio(t7, results)
    assert judged["met"] is None and judged["value"] == 1.5  # int4 met, int8 not measured: undecided
    assert judged["detail"]["int8, 1 user"] == {"not measured": "served/int8/llama-server skipped: llama-server is not on PATH"}
    results["served"]["int8"]["llama-server"] = {"1": {"output_tokens_per_second": 100.0}}
    judged = judge_ratio(t7, results)
    assert (judged["met"], judged["value"], judged["limit"]) == (False, 0.9, 1.3)  # the worst pair decides
    del results["served"]["int8"]
    assert judge_ratio(t7, results)["detail"]["int8, 1 user"] == {"not measured": "served/int8: not measured"}
