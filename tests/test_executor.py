"""The executor boundary (runtime/executor.py): a new runner method is reachable on every rank with no other
edit, and a decode step reaches its graph in few frames."""
from __future__ import annotations

import inspect
import os
import textwrap

from bucketserve import LLM, SamplingParams
from bucketserve.runtime.model_runner import ModelRunner

# A runner method nothing in the package knows: it sums a value over the ranks with an all-reduce, so rank 0
# gets the answer only if every other rank ran the same method in the same order.
RANK_SUM = textwrap.dedent('''
    import torch
    import torch.distributed as dist

    from bucketserve.runtime.model_runner import ModelRunner


    def rank_sum(self, value):
        total = torch.tensor([float(value + dist.get_rank())])
        dist.all_reduce(total)
        return total.item()


    ModelRunner.rank_sum = rank_sum
''')


def test_a_new_runner_method_runs_on_every_rank_at_tp2(tp2_eager_dir, tmp_path, monkeypatch):
    # The spawned worker is a fresh interpreter: it learns the method the way a package edit would reach it,
    # by importing it at start-up (sitecustomize on its PYTHONPATH); this process defines it the same way.
    (tmp_path / "sitecustomize.py").write_text(RANK_SUM)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    namespace: dict = {}
    exec(compile(RANK_SUM, "rank_sum", "exec"), namespace)
    monkeypatch.setattr(ModelRunner, "rank_sum", namespace["rank_sum"], raising=False)
    with LLM(model=str(tp2_eager_dir)) as llm:
        executor = llm.model.executor
        assert (executor.rank, len(executor.workers)) == (0, 1)
        assert executor.call("rank_sum", 10) == (10 + 0) + (10 + 1)
        assert executor.call("rank_sum", 3) == 7  # and the ranks are still in step for the next call


def _callers_up_to_generate() -> list[str]:
    """The qualified names of the frames above the caller's, innermost first, through LLM.generate."""
    chain = []
    for info in inspect.stack(context=0)[2:]:
        owner = info.frame.f_locals.get("self")
        chain.append(f"{type(owner).__name__}.{info.function}" if owner is not None else info.function)
        if info.frame.f_code is LLM.generate.__code__:
            return chain
    raise AssertionError(f"LLM.generate is not above the graph call: {chain}")


def test_a_decode_step_reaches_the_graph_in_six_frames(eager_dir):
    """Counted from LLM.generate (included) to the frame that calls the decoder graph (included): the chain
    docs/ARCHITECTURE.md writes out."""
    llm = LLM(model=str(eager_dir))
    runner = llm.model.runner
    chains = []

    def recording(graph):
        def call_graph(*inputs):
            chains.append(_callers_up_to_generate())
            return graph(*inputs)
        return call_graph

    runner.decoders = {batch: recording(graph) for batch, graph in runner.decoders.items()}
    llm.generate(["one", "two"], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True), use_tqdm=False)
    assert chains, "no decode step ran"
    assert all(chain == chains[0] for chain in chains)
    assert list(reversed(chains[0])) == ["LLM.generate", "LLM._run", "LLMEngine.step", "LocalExecutor.call",
                                         "ModelRunner.execute", "ModelRunner.decode"]
    assert len(chains[0]) <= 6

