"""The seed's two scripts (ported: imports and device changed) and the command line, run as a user would."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bucketserve import LLM, LlamaForCausalLM, SamplingParams
from bucketserve.demo.checkpoint import build_random_checkpoint
from bucketserve.demo.prompts import CONVERSATION_GROUPS
from bucketserve.entrypoints.cli import main as cli_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str, timeout: int = 600, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_seed_scripts_compile_then_serve(tmp_path):
    # The seed compiles with max_seq_len 8192, so the checkpoint must allow that many positions.
    checkpoint = build_random_checkpoint(tmp_path / "hf", shape="tiny", max_position_embeddings=8192)
    compiled = tmp_path / "rbln-dynamic"
    run(str(EXAMPLES / "compile_dynamic_batch.py"), str(checkpoint), str(compiled))
    # rbln_tensor_parallel_size=4: four ranks, each with its weight shard and a copy of the graph set rank 0
    # compiled (the ranks' graphs are the same code: the weights are not in them).
    for rank in range(4):
        assert sorted(p.name for p in (compiled / f"rank{rank}" / "graphs").glob("*.pt2")) == [
            "decoder_batch_1.pt2", "decoder_batch_4.pt2", "decoder_batch_8.pt2", "prefill.pt2"]
    manifest = json.loads((compiled / "bucketserve_manifest.json").read_text())
    assert {name.split("/")[0] for name in manifest["compile_seconds"]} == {"rank0"}
    stdout = run(str(EXAMPLES / "serve_dynamic_batch.py"), str(compiled))
    lines = [line for line in stdout.splitlines() if line.startswith("Prompt: ")]
    assert len(lines) == 1 + 4 + 8
    assert "What is sustainable development?" in lines[-1]
    # The 4-rank compiled graphs print what one process running the same weights uncompiled prints.
    assert lines == single_process_lines(checkpoint, tmp_path / "tp1-eager")


def single_process_lines(checkpoint, out) -> list[str]:
    LlamaForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", batch_size=8, max_seq_len=8192,
                                     decoder_batch_sizes=[8, 4, 1]).save_pretrained(out)
    llm = LLM(model=str(out))
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(temperature=0.0, skip_special_tokens=True, stop_token_ids=[tokenizer.eos_token_id])
    lines = []
    for group in CONVERSATION_GROUPS.values():
        chats = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in group]
        for out in llm.generate(chats, params, use_tqdm=False):
            lines.append(f"Prompt: {out.prompt!r}, Generated text: {out.outputs[0].text!r}")
    return lines


def test_cli_compile_and_generate(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "compiled"
    assert cli_main(["compile", str(tiny_checkpoint), str(out), "--batch-size", "4", "--max-seq-len", "128",
                     "--decoder-batch-sizes", "4", "2", "1", "--compiler", "eager"]) == 0
    assert "decoders [4, 2, 1]" in capsys.readouterr().out
    assert cli_main(["generate", str(out), "one", "two", "three", "--max-tokens", "5", "--ignore-eos"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("Prompt: ") == 3
    assert "batch 4: 4" in printed  # 3 prompts ran their 4 decode steps on the 4-decoder


def test_cli_rejects_a_bad_option_with_its_message_not_a_traceback(tiny_checkpoint, tmp_path, capsys):
    assert cli_main(["compile", str(tiny_checkpoint), str(tmp_path / "x"), "--decoder-batch-sizes", "16",
                     "--compiler", "eager"]) == 1
    err = capsys.readouterr().err
    assert "bucketserve compile: error: decoder_batch_sizes value 16 is larger than batch_size 8" in err
    assert "Traceback" not in err
    assert cli_main(["generate", str(tmp_path / "not-compiled"), "hi"]) == 1
    assert "bucketserve generate: error: " in capsys.readouterr().err


def test_cli_compile_leaves_unset_options_to_from_pretrained(tiny_checkpoint, tmp_path):
    # max_seq_len 64 with no --prefill-chunk-size: the chunk defaults to min(128, max_seq_len), as in the API,
    # and the KV block size to 16.
    out = tmp_path / "short"
    assert cli_main(["compile", str(tiny_checkpoint), str(out), "--batch-size", "2", "--max-seq-len", "64",
                     "--compiler", "eager"]) == 0
    config = LlamaForCausalLM.from_pretrained(out).rbln_config
    assert (config.max_seq_len, config.prefill_chunk_size, config.kvcache_block_size) == (64, 64, 16)


def test_cli_chat_reads_turns_until_eof(eager_dir, monkeypatch, capsys):
    turns = iter(["Hello", "And then?"])

    def fake_input(prompt=""):
        try:
            return next(turns)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert cli_main(["chat", str(eager_dir), "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("model> ") == 2


def test_a_command_whose_module_fails_to_import_says_why(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "benchmarks.cli", None)  # importing it now raises ImportError
    assert cli_main(["bench", "--tp-sizes", "1", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "bucketserve bench cannot run here: " in err and "benchmarks.cli" in err
