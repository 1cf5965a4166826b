"""The boundary between the engine and the device (nano-vllm's model_runner.call, vLLM's collective_rpc): the
engine and the user's model hold an Executor, never a runner, and ask it for runner work by name.

    executor.call("execute", StepInput(...))   # ModelRunner.execute on every rank, in step; this rank's result

A new runner method is one method on ModelRunner, and call("that_method", ...) reaches it on every rank: no list
of calls to extend, no stub on the ranks that follow. Three executors implement this one interface:
- LocalExecutor (here): one process, one rank;
- TensorParallelExecutor (tp_executor.py): rank 0, sending each call to the other ranks before running it;
- FollowerExecutor (rank_follower.py): a torchrun-launched rank other than 0, running rank 0's calls.
Which one a compiled directory gets: executors.py.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..config import CompileConfig
from ..models.config import ModelConfig
from .model_runner import ModelRunner


class TensorParallelError(RuntimeError):
    """A tensor-parallel rank failed (it died, its host vanished, a collective timed out) or the model was closed;
    this model can no longer run. Make a new one."""


class Executor(ABC):
    rank = 0  # this process's tensor-parallel rank (torchrun's RANK; spawned workers are not user processes)
    runs_script_calls = True  # False on a rank that runs rank 0's calls instead (FollowerExecutor)

    def __init__(self, directory: Path, driver: ModelRunner):
        """directory: the compiled directory; driver: this process's own runner (rank 0's shard on rank 0)."""
        self.directory = directory
        self.driver = driver
        self.compile_config: CompileConfig = driver.compile_config
        self.model_config: ModelConfig = driver.model_config

    @abstractmethod
    def call(self, method: str, *args: Any) -> Any:
        """ModelRunner.<method>(*args) on every rank, in the same order everywhere; returns this rank's result."""

    def script_call(self) -> ScriptCall:
        """One call of the user's script that every rank makes (LLM.generate, chat, model.generate):

            with executor.script_call() as script:
                if script.runs_here:
                    script.result = ...   # rank 0 (and a single process) runs the call
            return script.result         # every rank returns rank 0's

        A with-block rather than a callback so that the hot path has no frame for it (docs/ARCHITECTURE.md)."""
        return ScriptCall(self)

    def run_on_every_rank(self, call):
        """script_call around call()."""
        with self.script_call() as script:
            if script.runs_here:
                script.result = call()
        return script.result

    # What a script call does on this executor's rank; one process: nothing.
    def _script_started(self) -> None:
        return None

    def _script_ended(self, script: ScriptCall, error: BaseException | None) -> None:
        return None

    def follow(self) -> None:
        """On a torchrun rank other than 0: run rank 0's calls until rank 0 closes the model. Elsewhere: nothing."""
        return None

    def close(self) -> None:
        """Stop the other ranks (if any); the executor cannot run afterwards."""
        return None


class ScriptCall:
    """See Executor.script_call."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self.runs_here = executor.runs_script_calls
        self.result = None

    def __enter__(self) -> ScriptCall:
        self.executor._script_started()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.executor._script_ended(self, error)


class LocalExecutor(Executor):
    """One process, one rank: a call is the runner's method."""

    def call(self, method: str, *args: Any) -> Any:
        return getattr(self.driver, method)(*args)
