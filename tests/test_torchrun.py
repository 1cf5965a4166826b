"""Tensor-parallel ranks launched by torchrun: two torchrun agents on 127.0.0.1 act as two hosts (--nnodes 2
--nproc-per-node 1, static rendezvous on a free loopback port), each given only its own rank's files.

The same user script runs on both; every process started here is ended in a finally (the agents in sessions
of their own, the ranks by the pids they write), and every wait has a timeout."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bucketserve import LLM, SamplingParams

PROMPTS = ["The river ran", "Stars at night", "Bread and salt"]
MAX_TOKENS = 12
RANK_TIMEOUT_S = 10  # BUCKETSERVE_TP_TIMEOUT_S for the ranks started here
LAUNCH_TIMEOUT_S = 240  # two agents and two ranks importing torch and loading, on a loaded 2-core machine

# The user's script, the same on every rank: every rank calls generate and gets rank 0's outputs.
GENERATE_SCRIPT = """
import json, os, sys, time
from bucketserve import LLM, SamplingParams

model_dir, out_dir, repeat = sys.argv[1], sys.argv[2], sys.argv[3] == "repeat"
rank = int(os.environ["RANK"])
open(os.path.join(out_dir, f"pid{rank}"), "w").write(str(os.getpid()))
params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
try:
    llm = LLM(model=model_dir)
    outputs = llm.generate(PROMPTS, params, use_tqdm=False)
    result = {"rank": llm.rank, "tokens": [o.outputs[0].token_ids for o in outputs], "stats": llm.get_stats()}
    json.dump(result, open(os.path.join(out_dir, f"rank{rank}.json"), "w"))
    while repeat:  # until a rank fails
        llm.generate(PROMPTS, params, use_tqdm=False)
except Exception as err:
    json.dump({"error": type(err).__name__, "message": str(err), "at": time.time()},
              open(os.path.join(out_dir, f"rank{rank}.error.json"), "w"))
    raise
""".replace("MAX_TOKENS", str(MAX_TOKENS)).replace("PROMPTS", repr(PROMPTS))


def copy_for_host(compiled: Path, target: Path, ranks: list[int]) -> Path:
    """What one host needs: the shared files and its ranks' folders (as README's multi-node section says)."""
    for path in compiled.iterdir():
        if path.is_dir() and path.name.startswith("rank"):
            if int(path.name[4:]) in ranks:
                shutil.copytree(path, target / path.name)
        elif path.is_file():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
    return target


@pytest.fixture(scope="module")
def host_dirs(tp2_eager_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hosts")
    return [copy_for_host(tp2_eager_dir, root / f"host{node}", [node]) for node in (0, 1)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env() -> dict[str, str]:
    # Both "hosts" share this machine's cores and its loopback interface, as co-located nodes would.
    return {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
            "BUCKETSERVE_TP_TIMEOUT_S": str(RANK_TIMEOUT_S)}


class TwoNodes:
    """Two torchrun agents, node 0 and node 1, each running `args` (per node) with one rank."""

    def __init__(self, tmp_path: Path, args_per_node: list[list[str]]):
        self.out = tmp_path
        port = free_port()
        self.logs = [open(tmp_path / f"agent{node}.log", "w") for node in (0, 1)]
        self.agents = [
            subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                 "--node-rank", str(node), "--rdzv-endpoint", f"127.0.0.1:{port}", "--max-restarts", "0",
                 *args_per_node[node]],
                stdout=self.logs[node], stderr=subprocess.STDOUT, env=rank_env(), start_new_session=True)
            for node in (0, 1)
        ]

    def log(self, node: int) -> str:
        return (self.out / f"agent{node}.log").read_text()

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        return [agent.wait(max(1.0, deadline - time.monotonic())) for agent in self.agents]

    def wait_for_file(self, name: str, timeout: float = LAUNCH_TIMEOUT_S) -> Path:
        deadline = time.monotonic() + timeout
        path = self.out / name
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never appeared\n--- node 0:\n{self.log(0)}\n--- node 1:\n{self.log(1)}")
            if any(agent.poll() is not None for agent in self.agents) and not path.exists():
                time.sleep(1.0)  # let a rank that is writing it finish
                if not path.exists():
                    raise AssertionError(f"an agent ended before {name} appeared\n--- node 0:\n{self.log(0)}\n"
                                         f"--- node 1:\n{self.log(1)}")
            time.sleep(0.2)
        time.sleep(0.1)  # written in one go, but give the writer a moment to close it
        return path

    def rank_pids(self) -> list[int]:
        return [int(p.read_text()) for p in self.out.glob("pid*") if p.read_text()]

    def close(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGTERM)  # the agent forwards it to its rank
        try:
            self.wait(30)
        except subprocess.TimeoutExpired:
            pass
        for agent in self.agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
                agent.wait(10)
        for pid in self.rank_pids():  # torchrun starts each rank in a session of its own
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for log in self.logs:
            log.close()


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "generate_script.py"
    path.write_text(GENERATE_SCRIPT)
    return path


def reference_tokens(tp1_eager_dir) -> list[list[int]]:
    llm = LLM(model=str(tp1_eager_dir))
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params, use_tqdm=False)]


def test_two_hosts_one_rank_each_give_the_greedy_tokens_of_one_process(host_dirs, tp1_eager_dir, script, tmp_path):
    assert not (host_dirs[0] / "rank1").exists() and not (host_dirs[1] / "rank0").exists()
    nodes = TwoNodes(tmp_path, [[str(script), str(host_dirs[node]), str(tmp_path), "once"] for node in (0, 1)])
    try:
        assert nodes.wait() == [0, 0], nodes.log(0) + nodes.log(1)
    finally:
        nodes.close()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    want = reference_tokens(tp1_eager_dir)
    assert results[0]["tokens"] == want
    assert results[1]["tokens"] == want  # every rank returns rank 0's outputs
    assert [r["rank"] for r in results] == [0, 1]
    # Rank 1 ran the same decoders as rank 0: the 4-decoder for three prompts, step for step.
    assert results[0]["stats"]["decode_steps_per_decoder"] == results[1]["stats"]["decode_steps_per_decoder"]
    assert results[0]["stats"]["decode_steps_per_decoder"]["4"] > 0


def test_two_ranks_on_one_host_give_the_same_tokens(tp2_eager_dir, tp1_eager_dir, script, tmp_path):
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script), str(tp2_eager_dir), str(tmp_path), "once"],
                         env=rank_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode == 0, run.stdout + run.stderr
    want = reference_tokens(tp1_eager_dir)
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["tokens"] for r in (0, 1)] == [want, want]


def test_killing_the_rank1_agent_makes_rank0_raise_within_the_timeout(host_dirs, script, tmp_path):
    nodes = TwoNodes(tmp_path, [[str(script), str(host_dirs[node]), str(tmp_path), "repeat"] for node in (0, 1)])
    try:
        nodes.wait_for_file("rank0.json")  # both ranks loaded and generated once; they go on generating
        killed_at = time.time()
        os.killpg(nodes.agents[1].pid, signal.SIGKILL)  # the agent only: its rank must not outlive it
        error = json.loads(nodes.wait_for_file("rank0.error.json", timeout=RANK_TIMEOUT_S + 30).read_text())
        assert error["error"] == "TensorParallelError", error
        assert error["at"] - killed_at < RANK_TIMEOUT_S + 5, error
        assert nodes.agents[0].wait(60) != 0  # rank 0's script ended with the error, and its agent with it
        rank1 = int((tmp_path / "pid1").read_text())
        deadline = time.monotonic() + 10
        while _alive(rank1) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(rank1), "rank 1 outlived its agent"
    finally:
        nodes.close()


def test_a_rank_that_stops_answering_fails_rank0_within_the_timeout(host_dirs, script, tmp_path):
    """A host that vanishes (no connection closes; nothing answers) looks like a stopped process."""
    nodes = TwoNodes(tmp_path, [[str(script), str(host_dirs[node]), str(tmp_path), "repeat"] for node in (0, 1)])
    rank1 = None
    try:
        nodes.wait_for_file("rank0.json")
        rank1 = int((tmp_path / "pid1").read_text())
        stopped_at = time.time()
        os.kill(rank1, signal.SIGSTOP)
        error = json.loads(nodes.wait_for_file("rank0.error.json", timeout=RANK_TIMEOUT_S + 30).read_text())
        assert error["error"] == "TensorParallelError", error
        assert error["at"] - stopped_at < RANK_TIMEOUT_S + 5, error
    finally:
        if rank1 is not None:
            os.kill(rank1, signal.SIGKILL)
        nodes.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[-1].startswith("Z"))


def test_a_host_without_its_shard_fails_on_every_rank_naming_the_file(host_dirs, script, tmp_path_factory, tmp_path):
    broken = copy_for_host(host_dirs[1], tmp_path_factory.mktemp("host1-broken") / "host1", [1])
    (broken / "rank1" / "model.safetensors").unlink()
    nodes = TwoNodes(tmp_path, [[str(script), str(d), str(tmp_path), "once"] for d in (host_dirs[0], broken)])
    try:
        assert all(code != 0 for code in nodes.wait())
    finally:
        nodes.close()
    missing = str(broken / "rank1" / "model.safetensors")
    errors = [json.loads((tmp_path / f"rank{r}.error.json").read_text()) for r in (0, 1)]
    assert errors[1]["error"] == "CompiledModelError" and missing in errors[1]["message"]
    assert errors[0]["error"] == "TensorParallelError" and missing in errors[0]["message"]


def test_a_world_size_other_than_the_compiled_one_is_refused_at_start(tp2_eager_dir, script, tmp_path):
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                          str(script), str(tp2_eager_dir), str(tmp_path), "once"],
                         env=rank_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)
    assert run.returncode != 0
    error = json.loads((tmp_path / "rank0.error.json").read_text())
    assert error["error"] == "ValueError"
    assert "WORLD_SIZE=1" in error["message"] and "tensor_parallel_size=2" in error["message"]
    assert time.monotonic() - started < LAUNCH_TIMEOUT_S


def test_serve_under_torchrun_answers_chat_from_rank0_only(host_dirs, tp1_eager_dir, tmp_path):
    ports = [free_port(), free_port()]
    nodes = TwoNodes(tmp_path, [["-m", "bucketserve.entrypoints.cli", "serve", str(host_dirs[node]),
                                 "--port", str(ports[node]), "--served-model-name", "tiny"] for node in (0, 1)])
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while True:
            assert all(a.poll() is None for a in nodes.agents), nodes.log(0) + nodes.log(1)
            assert time.monotonic() < deadline, nodes.log(0) + nodes.log(1)
            try:
                if httpx.get(f"http://127.0.0.1:{ports[0]}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        messages = [{"role": "user", "content": "Name a river."}]
        body = {"model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0}
        reply = httpx.post(f"http://127.0.0.1:{ports[0]}/v1/chat/completions", json=body, timeout=60)
        assert reply.status_code == 200, reply.text
        text = reply.json()["choices"][0]["message"]["content"]
        with pytest.raises(httpx.TransportError):  # rank 1 follows; it serves nothing
            httpx.get(f"http://127.0.0.1:{ports[1]}/health", timeout=1)
    finally:
        nodes.close()
    expected = LLM(model=str(tp1_eager_dir)).chat(messages, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    assert text == expected[0].outputs[0].text
