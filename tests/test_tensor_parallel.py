"""tensor_parallel_size=2 on this CPU: rank 0 driving a worker, the all-reduce inside each rank's graphs.

These run the eager graphs (the same sharded modules and collectives, uncompiled) to keep the suite short;
tests/test_examples_cli.py compiles the seed's tensor_parallel_size=4 with AOTInductor and checks its
greedy output against a single process."""
from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams
from bucketserve.runtime.executor import TensorParallelError

GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
PROMPTS = ["The river ran", "Stars at night", "Bread and salt", "A glass of water"]


def test_tp2_greedy_tokens_equal_tp1_in_every_bucket(tp2_eager_dir, tp1_eager_dir):
    assert sorted(p.name for p in tp2_eager_dir.iterdir() if p.name.startswith("rank")) == ["rank0", "rank1"]
    with LLM(model=str(tp2_eager_dir), tensor_parallel_size=2) as tp2:
        reference = LLM(model=str(tp1_eager_dir))
        for n in (1, 2, 3, 4):  # the 1-decoder, then the 4-decoder with 2, 1 and 0 padding rows
            got = [o.outputs[0].token_ids for o in tp2.generate(PROMPTS[:n], GREEDY, use_tqdm=False)]
            want = [o.outputs[0].token_ids for o in reference.generate(PROMPTS[:n], GREEDY, use_tqdm=False)]
            assert got == want, n
        steps = tp2.get_stats()["decode_steps_per_decoder"]
        assert steps[1] > 0 and steps[4] > 0
    assert all(w.exitcode == 0 for w in tp2.model.executor.workers)


def test_manifest_records_the_rank_count_and_a_mismatch_is_an_error(tp2_eager_dir):
    model = AutoModelForCausalLM.from_pretrained(tp2_eager_dir)
    try:
        assert model.manifest["compile_config"]["tensor_parallel_size"] == 2
    finally:
        model.close()
    with pytest.raises(ValueError, match="tensor_parallel_size=1 was given, but it differs from the compiled tensor_parallel_size=2"):
        LLM(model=str(tp2_eager_dir), tensor_parallel_size=1)


def test_killed_worker_fails_the_call_clearly_and_a_new_llm_works(tp2_eager_dir):
    llm = LLM(model=str(tp2_eager_dir))
    executor = llm.model.executor
    local_decode = executor.driver.decode
    calls = []

    def decode_then_lose_the_worker(*args):
        calls.append(1)
        if len(calls) == 3:  # mid-generation, while rank 0 is about to all-reduce with it
            os.kill(executor.workers[0].pid, signal.SIGKILL)
        return local_decode(*args)

    executor.driver.decode = decode_then_lose_the_worker
    started = time.monotonic()
    with pytest.raises(TensorParallelError, match="create a new LLM"):
        llm.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
    assert time.monotonic() - started < 30
    with pytest.raises(TensorParallelError):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    with LLM(model=str(tp2_eager_dir)) as again:
        assert len(again.generate(PROMPTS[:1], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == GREEDY.max_tokens


def test_a_second_tensor_parallel_llm_is_refused_and_leaves_the_first_working(tp2_eager_dir):
    with LLM(model=str(tp2_eager_dir)) as first:
        before = first.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="process group already exists"):
            LLM(model=str(tp2_eager_dir))
        assert time.monotonic() - started < 5  # refused before any worker started
        after = first.generate(PROMPTS[:2], GREEDY, use_tqdm=False)
        assert [o.outputs[0].token_ids for o in after] == [o.outputs[0].token_ids for o in before]


def test_an_interrupted_call_closes_the_model_instead_of_leaving_the_ranks_out_of_step(tp2_eager_dir):
    llm = LLM(model=str(tp2_eager_dir))
    executor = llm.model.executor
    workers = list(executor.workers)

    def interrupted(*args):  # as a Ctrl-C landing after the workers started the call, between two all-reduces
        raise KeyboardInterrupt

    executor.driver.prefill_batch = interrupted  # the engine prefills through prefill_batch
    with pytest.raises(KeyboardInterrupt):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    assert all(w.process.wait(10) is not None for w in workers)
    with pytest.raises(TensorParallelError, match="closed"):
        llm.generate(PROMPTS[:1], GREEDY, use_tqdm=False)
    with LLM(model=str(tp2_eager_dir)) as again:
        assert len(again.generate(PROMPTS[:1], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == GREEDY.max_tokens


def test_workers_exit_on_close_and_on_garbage_collection(tp2_eager_dir):
    llm = LLM(model=str(tp2_eager_dir))
    workers = list(llm.model.executor.workers)
    llm.close()
    assert [w.process.wait(10) for w in workers] == [0]
    llm = LLM(model=str(tp2_eager_dir))
    workers = list(llm.model.executor.workers)
    del llm
    gc.collect()
    assert [w.process.wait(10) for w in workers] == [0]


def test_serve_runs_a_tensor_parallel_directory(tp2_eager_dir, tp1_eager_dir, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "bucketserve.entrypoints.cli", "serve", str(tp2_eager_dir),
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        body = {"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        text = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        expected = LLM(model=str(tp1_eager_dir)).generate(PROMPTS[0], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
        assert text == expected[0].outputs[0].text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
