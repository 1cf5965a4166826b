"""`bucketserve bench --real --accuracy --quick`: the GGUF run's pipeline on a tiny random model written as GGUF
(run uncompiled: the pipeline, not the graphs, is under test here), served over HTTP and offline, llama.cpp's
binaries run (from $BUCKETSERVE_LLAMA_BIN, else PATH) or skipped with the reason, perplexity checked against HF
transformers' logits, and bad options refused. Never a timing."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from benchmarks import accuracy
from benchmarks.options import build_options
from bucketserve.entrypoints.cli import build_parser

SPEED_TARGETS = ("T7", "T8", "engine tg", "engine B=8", "server/offline", "T9", "T10", "int4/fp32", "int8/fp32", "T11", "T12")
LLAMA_BIN = os.environ.get("BUCKETSERVE_LLAMA_BIN")  # llama.cpp's bin/ for the peers; unset: PATH (or skipped)
ACCURACY_TARGETS = ("ppl int8", "ppl int4", "ppl int4 (model file)")
SYSTEMS = ("fp32 [8, 4, 1]", "int8 [8, 4, 1]", "int4 [8, 4, 1]", "int4 [8]")


def parse(*argv):
    return build_parser().parse_args(["bench", *argv])


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One `bucketserve bench --real --accuracy --quick` for the module, through the CLI's own parser."""
    root = tmp_path_factory.mktemp("bench-real")
    args = parse("--real", "--accuracy", "--quick", "--cache-dir", str(root / "cache"), "--out-dir", str(root / "out"),
                 *(["--llama-bin", LLAMA_BIN] if LLAMA_BIN else []))
    returned = args.func(args)
    speed = json.loads((root / "out" / "bench.json").read_text())
    accuracy_results = json.loads((root / "out" / "accuracy.json").read_text())
    return returned, speed, accuracy_results, root


def test_both_files_are_written_and_returned(real_run):
    returned, speed, accuracy_results, root = real_run
    assert returned["real"]["targets"].keys() == speed["targets"].keys()
    assert returned["accuracy"]["targets"].keys() == accuracy_results["targets"].keys()
    assert speed["mode"] == "real" and accuracy_results["mode"] == "accuracy"
    assert speed["options"]["compiler"] == "eager"  # --quick runs the model code uncompiled
    assert speed["model"]["file"].endswith(".gguf") and speed["model"]["bytes"] > 0
    assert set(speed["model"]["files"]) == {"int8", "int4"}  # the Q8_0 and Q4_0 files llama.cpp reads too
    assert not (root / "out" / "bench.partial.json").exists()


def test_every_system_ran_or_says_why_not(real_run):
    _, speed, _, _ = real_run
    for name in SYSTEMS:
        assert (name in speed["systems"]) != (name in speed["skipped"]), name
        if name in speed["skipped"]:
            assert name != "fp32 [8, 4, 1]" and speed["skipped"][name]
    fp32 = speed["systems"]["fp32 [8, 4, 1]"]
    assert fp32["quantization"] is None and fp32["decoder_batch_sizes"] == [8, 4, 1]
    assert fp32["weight_bytes"] > 0 and fp32["kv_cache_bytes"] > 0


def test_step_latency_has_a_floor_for_every_decoder(real_run):
    _, speed, _, _ = real_run
    for name, info in speed["systems"].items():
        steps = speed["step_latency"][name]
        assert sorted(map(int, steps)) == sorted(info["decoder_batch_sizes"])
        for step in steps.values():
            assert step["context_len"] == speed["options"]["max_seq_len"]
            for field in ("median_seconds", "floor_seconds", "ratio_to_floor", "weight_bytes", "kv_bytes"):
                assert step[field] > 0, field


def test_interleaved_scenarios_count_every_token(real_run):
    _, speed, _, _ = real_run
    new_tokens, repeats = speed["options"]["new_tokens"], speed["options"]["repeats"]
    for scenario, requests in (("batch_1", 1), ("concurrent_8", 8)):
        runs = speed[scenario]
        assert "fp32 [8, 4, 1]" in runs
        for name, run in runs.items():
            assert run["requests"] == requests and run["output_tokens"] == requests * new_tokens, (scenario, name)
            assert len(run["runs_seconds"]) == repeats and run["median_seconds"] > 0
    # bucketserve runs one request on the 1-decoder; 8 at once on the 8-decoder once all are prefilled (the
    # prompts are prefilled one by one between decode steps, so the first steps run on smaller decoders).
    assert speed["batch_1"]["fp32 [8, 4, 1]"]["decode_steps_per_decoder"] == {"8": 0, "4": 0, "1": new_tokens - 1}
    assert speed["concurrent_8"]["fp32 [8, 4, 1]"]["decode_steps_per_decoder"]["8"] > 0


def test_served_and_offline_count_every_token_at_every_user_count(real_run):
    _, speed, _, _ = real_run
    options = speed["options"]
    per_run = options["requests_per_user"] * options["new_tokens"]
    for quantization in ("int8", "int4"):
        ours = speed["served"][quantization]["bucketserve serve"]
        assert set(ours) == {str(u) for u in options["users"]}
        for users, run in ours.items():
            assert run["requests"] == int(users) * options["requests_per_user"]
            assert run["output_tokens"] == int(users) * per_run, (quantization, users)
            assert run["ttft_seconds"]["p50"] > 0 and run["ttft_seconds"]["p99"] >= run["ttft_seconds"]["p50"]
            assert run["inter_token_seconds"]["p50"] > 0
            assert "bucketserve.entrypoints.cli serve" in run["command"]
            assert speed["offline"][quantization][users]["output_tokens"] == int(users) * per_run
        ours_engine = speed["engine"][quantization]["bucketserve LLM.generate"]
        shapes = speed["engine_shapes"]
        assert {f"tg{shapes['tg']}", f"pp{shapes['pp']}"} | {f"B={b}" for b in shapes["batches"]} == set(ours_engine)


def test_llama_cpp_runs_on_the_same_files_or_says_why_not(real_run):
    _, speed, _, _ = real_run
    for quantization, file_type in (("int8", "Q8_0"), ("int4", "Q4_0")):
        assert speed["model"]["files"][quantization].endswith(f".{file_type}.gguf")
        theirs = speed["served"][quantization]["llama-server"]
        if "skipped" in theirs:  # a missing binary is a reason naming it and how to get it, never a silent gap
            assert "llama-server" in theirs["skipped"] and "--llama-bin" in theirs["skipped"]
        else:
            for users, run in theirs.items():
                assert run["output_tokens"] == int(users) * speed["options"]["requests_per_user"] * speed["options"]["new_tokens"]
                assert f"-np {users}" in run["command"] and speed["model"]["files"][quantization] in run["command"]
        for peer in ("llama-bench", "llama-batched-bench"):
            figures = speed["engine"][quantization][peer]
            if "skipped" in figures:
                assert peer in figures["skipped"]
            else:
                assert figures["command"].split()[0].endswith(peer) and len(figures) > 1


def test_llama_cpp_missing_is_a_reason_not_a_failure(real_run, tmp_path):
    from benchmarks import serving

    _, _, _, root = real_run
    options = build_options(parse("--real", "--quick", "--cache-dir", str(root / "cache"), "--llama-bin", str(tmp_path)))
    figures = serving.llama_cpp_engine(tmp_path / "model.gguf", options)
    for peer in ("llama-bench", "llama-batched-bench"):
        assert f"{peer} is not in --llama-bin {tmp_path}" in figures[peer]["skipped"]
        assert "docs/PERFORMANCE.md" in figures[peer]["skipped"]


def test_every_target_is_judged_with_its_limit(real_run):
    _, speed, accuracy_results, _ = real_run
    assert tuple(speed["targets"]) == SPEED_TARGETS
    assert tuple(accuracy_results["targets"]) == ACCURACY_TARGETS
    limits = {"T7": 1.3, "T8": 2.0, "engine tg": 1.2, "engine B=8": 2.0, "server/offline": 0.95, "T9": 1.3, "T10": 0.7, "int4/fp32": 0.4, "int8/fp32": 0.55, "T11": 0.2, "T12": 0.5, "ppl int8": 1.01, "ppl int4": 1.05,
              "ppl int4 (model file)": 1.05}
    for name, target in {**speed["targets"], **accuracy_results["targets"]}.items():
        assert target["met"] in (True, False, None), name
        assert target["limit"] == limits[name], name
        if target["met"] is None:  # not measured: the detail says why
            assert target["detail"], name
        else:
            assert target["value"] is not None, name
    quantized_ran = "int8 [8, 4, 1]" in speed["systems"]
    assert (speed["targets"]["int8/fp32"]["met"] is not None) == quantized_ran
    assert speed["targets"]["server/offline"]["met"] is not None  # needs no peer: always judged
    assert (accuracy_results["targets"]["ppl int8"]["met"] is not None) == quantized_ran


def test_accuracy_scores_the_shipped_text_and_answers_every_question(real_run):
    _, _, results, _ = real_run
    text = results["text"]
    assert text["characters"] == len(accuracy.load_text()) > 10_000
    assert text["window_tokens"] == results["options"]["max_seq_len"] - 1
    assert text["tokens"] == min(text["text_tokens"], 8 * text["window_tokens"])  # --quick scores 8 windows
    fp32 = results["perplexity"]["fp32"]
    chunks = accuracy.windows(list(range(text["tokens"])), text["window_tokens"])
    assert fp32["windows"] == len(chunks)
    assert fp32["tokens_scored"] == sum(len(c) - 1 for c in chunks)  # every token but each window's first
    assert 1 < fp32["perplexity"] < float("inf")
    kept = results["perplexity"].get("int4 (model file)")
    if kept is not None:  # int4 keeps the Q4_1 file's blocks: fp32's values, so its perplexity up to summation order
        assert kept["perplexity"] == pytest.approx(fp32["perplexity"], rel=1e-4)
    assert len(results["answers"]["fp32"]) == len(results["questions"]) == len(accuracy.chat_questions())
    for name, agreement in results["greedy_agreement"].items():
        assert agreement["sequences"] == len(results["questions"]), name
    if "llama.cpp" not in results["skipped"]:  # llama.cpp's perplexity on each system's own file, for reference
        assert "fp32" in results["llama_cpp_perplexity"]
        for name, ppl in results["llama_cpp_perplexity"].items():
            assert ppl["tokens_scored"] == fp32["tokens_scored"] and ppl["perplexity"] > 1, name


def test_plots_written_or_skipped_with_a_reason(real_run):
    _, speed, _, _ = real_run
    if "plots" in speed["skipped"]:
        assert "matplotlib" in speed["skipped"]["plots"]
    else:
        assert sorted(p.rsplit("/", 1)[-1] for p in speed["plots"]) == ["real_step_time_vs_floor.png", "real_vs_llama_cpp.png"]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A tiny random checkpoint and an LLM over its uncompiled build (max_seq_len 64)."""
    from bucketserve import LLM, AutoModelForCausalLM
    from bucketserve.demo.checkpoint import build_random_checkpoint

    root = tmp_path_factory.mktemp("ppl")
    checkpoint = build_random_checkpoint(root / "checkpoint", shape="tiny", seed=3)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, batch_size=4, max_seq_len=64,
                                                 decoder_batch_sizes=[4, 1], prefill_chunk_size=16, compiler="eager")
    model.save_pretrained(root / "compiled")
    return checkpoint, LLM(model=str(root / "compiled"))


def hf_perplexity(checkpoint, token_ids: list[int], window: int) -> tuple[float, int]:
    """Perplexity computed directly from HF transformers' logits, window by window; and the tokens scored."""
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    nll, scored = 0.0, 0
    with torch.no_grad():
        for chunk in accuracy.windows(token_ids, window):
            logprobs = torch.log_softmax(reference(torch.tensor([chunk])).logits[0].double(), dim=-1)
            targets = torch.tensor(chunk[1:])
            nll -= float(logprobs[:-1].gather(1, targets[:, None]).sum())
            scored += len(chunk) - 1
    return math.exp(nll / scored), scored


def test_perplexity_equals_a_direct_computation_from_hf_logits(tiny_llm):
    checkpoint, llm = tiny_llm
    token_ids = llm.get_tokenizer()(accuracy.load_text()[:2000])["input_ids"]
    ours = accuracy.perplexity(llm, token_ids, 63)
    expected, scored = hf_perplexity(checkpoint, token_ids, 63)
    assert ours["tokens_scored"] == scored == len(token_ids) - ours["windows"]
    assert ours["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_llama_cpp_perplexity_equals_hf_on_an_f32_file(tiny_llm, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[bench]')")
    from bucketserve.checkpoints.gguf_writer import write_gguf

    checkpoint, llm = tiny_llm
    token_ids = llm.get_tokenizer()(accuracy.load_text()[:2000])["input_ids"]
    path = write_gguf(checkpoint, tmp_path / "tiny.f32.gguf", "F32")
    theirs = accuracy.llama_cpp_perplexity(path, token_ids, 63, threads=2)
    expected, scored = hf_perplexity(checkpoint, token_ids, 63)
    assert theirs["tokens_scored"] == scored
    assert theirs["perplexity"] == pytest.approx(expected, rel=1e-3)  # llama.cpp's own fp32 kernels


def test_windows_cover_every_token_once():
    ids = list(range(130))
    chunks = accuracy.windows(ids, 64)
    assert [len(c) for c in chunks] == [64, 64, 2]
    assert [t for c in chunks for t in c] == ids
    assert [len(c) for c in accuracy.windows(list(range(129)), 64)] == [64, 64]  # a lone last token predicts nothing
    with pytest.raises(ValueError, match="at least 2 tokens, got 1"):
        accuracy.windows(ids, 1)


def test_agreement_counts_identical_sequences_and_common_prefixes():
    result = accuracy.agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]])
    assert result == {"sequences": 2, "identical": 1, "mean_prefix_fraction": (0.5 + 1.0) / 2}


def test_weight_bytes_count_whatever_the_model_stores(tiny_llm):
    """A quantized projection's packed values, scales and mins are read every step: a tensor the model stores
    (a persistent buffer) counts in the floor; the rotary table (not stored) does not."""
    from benchmarks.roofline import weight_bytes_per_step

    _, llm = tiny_llm
    model = llm.model
    plain = weight_bytes_per_step(model, 1)
    embedding = model.runner.model.model.embed_tokens.weight
    untied_rows_not_read = 0 if model.model_config.tie_word_embeddings else (embedding.shape[0] - 1) * embedding.shape[1] * 4
    assert plain == sum(p.numel() * p.element_size() for p in model.runner.model.parameters()) - untied_rows_not_read
    layer = model.runner.model.model.layers[0].mlp
    layer.register_buffer("test_qweight", torch.zeros(1000, dtype=torch.int8))
    layer.register_buffer("test_scratch", torch.zeros(1000, dtype=torch.float32), persistent=False)
    try:
        assert weight_bytes_per_step(model, 1) == plain + 1000
    finally:
        del layer.test_qweight, layer.test_scratch


@pytest.mark.parametrize("argv, message", [
    (["--gguf-file", "x.gguf"], "--gguf-file x.gguf is an option of the real-model mode; add --real"),
    (["--repeats", "2"], "--repeats 2 is an option of the real-model mode"),
    (["--real", "--shape", "tiny"], "--shape tiny picks a random model's shape"),
    (["--real", "--gguf-file", "/nonexistent/model.gguf"], "--gguf-file /nonexistent/model.gguf is not a file"),
    (["--accuracy", "--quick", "--gguf-file", __file__], "--quick with --real writes its own tiny GGUF model"),
    (["--real", "--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--real", "--tp-sizes", "2"], "--tp-sizes is an option of the random-model bench"),
    (["--accuracy", "--prompt-len", "8"], "--prompt-len is an option of the random-model bench"),
])
def test_bad_real_mode_options_are_refused_before_anything_runs(argv, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        build_options(parse(*argv))


def test_real_mode_defaults_and_quick_defaults():
    real = build_options(parse("--real"))
    assert (real.real, real.accuracy, real.compiler, real.new_tokens, real.repeats) == (True, False, "aoti", 128, 3)
    assert str(real.out_dir) == "bench-results/real"  # apart from the random bench's bench.json
    quick = build_options(parse("--accuracy", "--quick", "--repeats", "2"))
    assert (quick.accuracy, quick.compiler, quick.repeats) == (True, "eager", 2)  # explicit flags win over --quick's
    assert build_options(parse("--quick")).real is False


def test_gguf_run_defaults_serve_every_user_count_on_decoders_that_hold_them():
    real = build_options(parse("--real"))
    assert (real.decoder_batch_sizes, real.users, real.requests_per_user) == ((16, 8, 4, 1), (1, 8, 16), 2)
    assert build_options(parse("--real", "--users", "8", "1", "8")).users == (1, 8)
    assert build_options(parse("--real", "--decoder-batch-sizes", "1", "8")).decoder_batch_sizes == (8, 1)
    skipped = build_options(parse("--real", "--skip", "single", "fp32", "llama.cpp"))
    assert skipped.skip_systems == ("fp32", "single") and "llama.cpp" not in skipped.peers
    from benchmarks.systems import gguf_systems

    assert set(gguf_systems(skipped)) == {"int8", "int4", "int4 model file"}
    assert set(gguf_systems(build_options(parse("--real", "--skip", "int4")))) == {"fp32", "int8"}
    in_process = build_options(parse("--real", "--skip", "in-process"))  # the comparisons with llama.cpp alone
    assert in_process.skip_systems == ("in-process",) and len(gguf_systems(in_process)) == 5


@pytest.mark.parametrize("argv, message", [
    (["--requests-per-user", "2"], "--requests-per-user 2 is an option of the real-model mode"),
    (["--users", "4"], "--users [4] is an option of the real-model mode"),
    (["--real", "--users", "0", "8"], "--users must be >= 1, got [0, 8]"),
    (["--real", "--requests-per-user", "0"], "--requests-per-user must be >= 1, got 0"),
    (["--skip", "fp32"], "--skip ['fp32'] names no peer; peers are eager, hf, hf-static, llama.cpp"),
])
def test_bad_serving_options_are_refused_before_anything_runs(argv, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        build_options(parse(*argv))
