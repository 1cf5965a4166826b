"""The compiled directory: save -> load gives the same logits and compiles nothing; a damaged directory fails
with CompiledModelError naming the file; it is also a Hugging Face config and tokenizer directory."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from manifest_loads import load_cases

import bucketserve.compiler.aoti
from bucketserve import AutoModelForCausalLM, LlamaForCausalLM
from bucketserve.checkpoints.file_digest import sha256_of
from bucketserve.compiler.directory_layout import GRAPHS_DIR
from bucketserve.compiler.graph_specs import context_len_through, prefill_width
from bucketserve.compiler.manifest import MANIFEST, CompiledModelError, seal
from bucketserve.kernels import library


def prompts_for(model, lengths: list[int]) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, model.config.vocab_size, (n,), generator=generator).tolist() for n in lengths]


def logits_of(model) -> list[torch.Tensor]:
    """Prefill two prompts, then decode them on every compiled decoder: every logits tensor on the way."""
    block_size = model.rbln_config.kvcache_block_size
    prompts = prompts_for(model, [40, 17])
    tables = [[2, 3], [1]] if block_size < 64 else [[2], [1]]
    logits = [model.prefill(p, t).logits for p, t in zip(prompts, tables, strict=True)]
    for num_seqs in (2, 1):
        logits.extend(model.decode([5] * num_seqs, [len(p) for p in prompts[:num_seqs]], tables[:num_seqs]))
    return logits


def refuse_to_compile(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loading a compiled directory must not compile anything")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", refuse)
    monkeypatch.setattr(torch.export, "export", refuse)
    monkeypatch.setattr(bucketserve.compiler.aoti, "compile_graph", refuse)


def test_save_then_load_gives_identical_logits_and_compiles_nothing(
    qwen3_compiled, qwen3_checkpoint, tmp_path, monkeypatch
):
    qwen3_compiled.save_pretrained(tmp_path / "saved")
    refuse_to_compile(monkeypatch)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")

    assert loaded.rbln_config == qwen3_compiled.rbln_config
    for ours, compiled in zip(logits_of(loaded), logits_of(qwen3_compiled), strict=True):
        assert torch.equal(ours, compiled)
    # The guard is real: compiling under it fails.
    with pytest.raises(AssertionError, match="must not compile"):
        AutoModelForCausalLM.from_pretrained(qwen3_checkpoint, export=True, max_seq_len=64)


def test_eager_save_then_load_gives_identical_logits(tiny_checkpoint, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, compiler="eager", batch_size=2, max_seq_len=128, kvcache_block_size=32
    )
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert loaded.rbln_config == model.rbln_config
    for ours, original in zip(logits_of(loaded), logits_of(model), strict=True):
        assert torch.equal(ours, original)


def test_save_refuses_a_folder_holding_another_models_weights_or_its_own_subfolder(tiny_checkpoint, eager_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(eager_dir)
    # Another model's sharded checkpoint: its index would be read instead of the saved model.safetensors.
    target = tmp_path / "old-checkpoint"
    target.mkdir()
    (target / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(FileExistsError, match="model.safetensors.index.json"):
        model.save_pretrained(target)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file; save_pretrained writes a directory"):
        model.save_pretrained(tmp_path / "a-file")
    with pytest.raises(ValueError, match="inside the model's own directory"):
        model.save_pretrained(eager_dir / "copy")
    assert not (eager_dir / "copy").exists()
    # Re-saving over an earlier save of a compiled model is fine; a weight file copied in afterwards is caught.
    model.save_pretrained(tmp_path / "saved")
    model.save_pretrained(tmp_path / "saved")
    shutil.copy(tiny_checkpoint / "model.safetensors", tmp_path / "saved" / "model-00001-of-00002.safetensors")
    with pytest.raises(CompiledModelError, match="model-00001-of-00002.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "saved")


def test_raw_calls_check_token_ids_and_generate_takes_do_sample_false(eager_dir):
    model = AutoModelForCausalLM.from_pretrained(eager_dir)
    vocab = model.config.vocab_size
    with pytest.raises(ValueError, match=f"token ids \\[{vocab}\\] are outside the vocabulary"):
        model.prefill([1, 2, vocab], [1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.decode([-1], [3], [[1]])
    ids = torch.tensor([[5, 6, 7]])
    assert torch.equal(model.generate(ids, max_new_tokens=3, do_sample=False), model.generate(ids, max_new_tokens=3))
    with pytest.raises(ValueError, match="greedy only"):
        model.generate(ids, max_new_tokens=3, do_sample=True)


def damaged_copy(compiled_dir, target, damage: str):
    shutil.copytree(compiled_dir, target)
    if damage == "missing":
        (target / "graphs" / "decoder_batch_4.pt2").unlink()
        return "decoder_batch_4.pt2"
    if damage == "truncated":
        weights = target / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return "model.safetensors"
    if damage == "modified":
        graph = target / "graphs" / "prefill.pt2"
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different content
        graph.write_bytes(bytes(data))
        return "prefill.pt2"
    if damage == "other torch":
        manifest = json.loads((target / MANIFEST).read_text())
        manifest["torch_version"] = "2.0.0"  # as another torch writes it: sealed
        (target / MANIFEST).write_text(json.dumps(seal(manifest)))
        return MANIFEST
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["missing", "truncated", "modified", "other torch"])
def test_damaged_directory_names_the_file_and_says_recompile(compiled_dir, tmp_path, damage):
    named = damaged_copy(compiled_dir, tmp_path / "copy", damage)
    with pytest.raises(CompiledModelError, match="recompile") as error:
        AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert named in str(error.value)
    if damage == "other torch":
        assert "2.0.0" in str(error.value) and torch.__version__ in str(error.value)


def test_a_checkpoint_is_not_a_compiled_directory(tiny_checkpoint):
    with pytest.raises(CompiledModelError, match="export=True"):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint)


def test_compiled_directory_is_a_transformers_tokenizer_and_config_directory(compiled_dir, tiny_checkpoint):
    tokenizer = transformers.AutoTokenizer.from_pretrained(compiled_dir)
    source = transformers.AutoTokenizer.from_pretrained(tiny_checkpoint)
    text = "the cat and the dog"
    assert tokenizer(text).input_ids == source(text).input_ids
    assert tokenizer.decode(tokenizer(text).input_ids) == text
    assert tokenizer.eos_token == source.eos_token

    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads == model.model_config.num_key_value_heads
    assert model.generation_config.eos_token_id == transformers.GenerationConfig.from_pretrained(tiny_checkpoint).eos_token_id


def test_loading_with_the_compiled_options_in_any_spelling_works(eager_dir):
    compiled = AutoModelForCausalLM.from_pretrained(eager_dir).rbln_config
    sizes = list(reversed(compiled.decoder_batch_sizes))  # ascending: the same set, as a user might write it
    model = LlamaForCausalLM.from_pretrained(
        eager_dir, export=False, batch_size=compiled.batch_size, rbln_max_seq_len=compiled.max_seq_len,
        rbln_config={"decoder_batch_sizes": sizes},
    )
    assert model.rbln_config == compiled


@pytest.mark.parametrize("option", ["batch_size", "rbln_max_seq_len", "decoder_batch_sizes", "compiler"])
def test_loading_with_a_different_compile_option_is_an_error(eager_dir, option):
    compiled = AutoModelForCausalLM.from_pretrained(eager_dir).rbln_config
    different = {
        "batch_size": compiled.batch_size // 2,
        "rbln_max_seq_len": compiled.max_seq_len // 2,
        "decoder_batch_sizes": [compiled.batch_size],
        "compiler": "aoti",
    }[option]
    with pytest.raises(ValueError, match="recompile") as error:
        AutoModelForCausalLM.from_pretrained(eager_dir, export=False, **{option: different})
    assert option.removeprefix("rbln_") in str(error.value)


def test_decode_more_sequences_than_batch_size_is_an_error(eager_dir):
    model = AutoModelForCausalLM.from_pretrained(eager_dir)
    too_many = model.rbln_config.batch_size + 1
    with pytest.raises(ValueError, match=f"cannot decode {too_many} sequences") as error:
        model.decode([5] * too_many, [0] * too_many, [[1 + i] for i in range(too_many)])
    assert str(model.rbln_config.batch_size) in str(error.value)
    with pytest.raises(ValueError, match=f"{too_many} prompts"):
        model.generate(torch.ones(too_many, 4, dtype=torch.long), max_new_tokens=2)


def test_block_tables_that_would_touch_the_padding_block_or_run_off_the_cache_are_errors(eager_dir):
    model = AutoModelForCausalLM.from_pretrained(eager_dir)
    config = model.rbln_config
    prompt = prompts_for(model, [config.kvcache_block_size + 1])[0]  # needs two blocks
    with pytest.raises(ValueError, match=f"position {config.kvcache_block_size} is outside the sequence.s 1 blocks"):
        model.prefill(prompt, [1])
    with pytest.raises(ValueError, match="block id 0 cannot hold a sequence"):
        model.prefill(prompt, [0, 1])
    with pytest.raises(ValueError, match=f"block id {config.kvcache_num_blocks} cannot hold a sequence"):
        model.decode([5], [3], [[config.kvcache_num_blocks]])
    # The dummy block is untouched by the refused calls; a valid table still works.
    assert not model.kv_cache.tensor.any()
    assert model.prefill(prompt, [1, 2]).logits.shape == (model.config.vocab_size,)


@pytest.mark.parametrize("last_position, expected", [(0, 64), (63, 64), (64, 128), (100, 128), (200, 256), (255, 256)])
def test_a_call_reads_its_furthest_tokens_context_rounded_up(last_position, expected):
    assert context_len_through(last_position, max_seq_len=256) == expected


@pytest.mark.parametrize("real, chunk, expected", [(1, 32, 16), (16, 32, 16), (17, 32, 32), (32, 32, 32), (20, 24, 24), (5, 8, 8)])
def test_a_prefill_chunk_runs_its_real_tokens_rounded_up(real, chunk, expected):
    assert prefill_width(real, chunk) == expected


def test_compiled_prefill_runs_short_chunks_over_the_context_they_reach(compiled_dir):
    """A 40-token prompt with chunk 32 runs as 32 tokens over 64 positions, then 8 real tokens padded to
    16 over 64; one of 100 at position 0 as 32 + 32 + 32 + 16 (4 real), its last chunk over 128 positions."""
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    runner = model.runner
    compiled, calls = runner.prefill_graph, []

    def recording(*inputs):
        calls.append((inputs[0].shape[1], len(inputs[4])))
        return compiled(*inputs)

    runner.prefill_graph = recording
    short, long = prompts_for(model, [40, 100])
    model.prefill(short, [1])
    assert calls == [(32, 64), (16, 64)]
    calls.clear()
    model.prefill(long, [2, 3])
    assert calls == [(32, 64), (32, 64), (32, 128), (16, 128)]


def test_compiled_cpu_decoder_reads_each_row_up_to_its_own_position(compiled_dir):
    """A CPU fp32 decoder attends through the kernel (kernels/paged_attention.cpp), which reads a row's
    context up to the row's position whatever context_positions' length: 64, 128 or 256 give the same
    logits; a cached key at a position the row sees changes them, one past it does not."""
    assert (compiled_dir / GRAPHS_DIR / library.LIBRARY_FILE).is_file()
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    runner = model.runner
    prompt = prompts_for(model, [100])[0]
    table = [3, 4]
    model.prefill(prompt, table)
    cache = runner.kv_cache
    inputs = [torch.tensor(v) for v in ([5], [100], [cache.slot(table, 100)], [cache.padded_block_table(table)])]

    def logits_reading(context_len: int) -> torch.Tensor:
        with torch.inference_mode():
            return runner.decoders[1](*inputs, runner.model.context_positions[:context_len], cache.tensor)

    full = logits_reading(256)
    assert torch.equal(full, logits_reading(128)) and torch.equal(full, logits_reading(64))
    cache.tensor[:, 0, cache.slot(table, 120)] = float("nan")  # past position 100: never read
    assert torch.equal(full, logits_reading(128))
    cache.tensor[:, 0, cache.slot(table, 70)] *= 2  # seen by the row
    assert not torch.allclose(full, logits_reading(128), rtol=0, atol=1e-3 * full.abs().max().item())


def snapshot(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_save_that_fails_part_way_leaves_the_old_directory_untouched(tiny_checkpoint, eager_dir, tmp_path, monkeypatch):
    target = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(eager_dir).save_pretrained(target)
    before = snapshot(target)
    other = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, compiler="eager", batch_size=2, max_seq_len=128, kvcache_block_size=32)
    copied, real_copyfile = [], shutil.copyfile

    def copy_three_then_fail(src, dst, *args, **kwargs):
        if len(copied) == 3:
            raise OSError(28, "No space left on device (simulated)")
        copied.append(src)
        return real_copyfile(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_three_then_fail)
    with pytest.raises(OSError, match="No space left"):
        other.save_pretrained(target)
    with pytest.raises(OSError, match="No space left"):
        other.save_pretrained(tmp_path / "fresh")
    copied.clear()
    assert len(copied) == 0 and snapshot(target) == before  # byte for byte the earlier save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no partial sibling, no half-written "fresh"
    monkeypatch.setattr(shutil, "copyfile", real_copyfile)
    other.save_pretrained(target)  # a save that completes replaces it as a whole
    assert AutoModelForCausalLM.from_pretrained(target).rbln_config == other.rbln_config


def test_save_refuses_to_replace_a_folder_of_other_files(eager_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        AutoModelForCausalLM.from_pretrained(eager_dir).save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---- the manifest: sealed by its own digest, its options through the compile-time validator, its graphs
# checked against them; every load that could crash runs in a child process (tests/manifest_loads.py) ----

def reseal_file_entry(directory, relative: str) -> None:
    """Record a file's new size and sha256 in the manifest, as a careless re-run of a checksum tool would."""
    manifest = json.loads((directory / MANIFEST).read_text())
    path = directory / relative
    manifest["files"][relative] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    (directory / MANIFEST).write_text(json.dumps(seal(manifest)))


def test_an_edited_manifest_field_is_caught_by_its_digest_before_a_graph_runs(compiled_dir, tmp_path):
    shutil.copytree(compiled_dir, tmp_path / "copy")
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    manifest["compile_config"]["kvcache_num_blocks"] = 1000
    (tmp_path / "copy" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CompiledModelError, match="does not match its own manifest_sha256") as error:
        AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert MANIFEST in str(error.value)


@pytest.mark.parametrize("content, named", [("[1, 2]", "holds a JSON list"), ('"text"', "holds a JSON str"),
                                            ("{", "is not valid JSON")])
def test_a_manifest_that_is_no_json_object_is_a_compiled_model_error(compiled_dir, tmp_path, content, named):
    shutil.copytree(compiled_dir, tmp_path / "copy")
    (tmp_path / "copy" / MANIFEST).write_text(content)
    with pytest.raises(CompiledModelError, match=named) as error:
        AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert MANIFEST in str(error.value)


# Edits the issue reproduced (each crashed, hung, or gave other tokens silently), made with the digest recomputed
# as a deliberate edit would: each is caught by the check for what it changes, naming the file and the field.
RESEALED_EDITS = {
    "kv_cache_dtype bf16": ([(["compile_config", "kv_cache_dtype"], "bfloat16")], "input kv_cache"),
    "block size 32": ([(["compile_config", "kvcache_block_size"], 32), (["compile_config", "kvcache_num_blocks"], 17)],
                      "input block_tables"),
    "1000 blocks": ([(["compile_config", "kvcache_num_blocks"], 1000)], "input kv_cache"),
    "2 blocks": ([(["compile_config", "kvcache_num_blocks"], 2)], "kvcache_num_blocks 2 cannot hold one full sequence"),
    "a decoder not compiled": ([(["compile_config", "decoder_batch_sizes"], [8, 4, 2, 1])], "graphs/decoder_batch_2.pt2"),
    "rope_theta": ([(["model_config", "rope_theta"], 500000.0)], "model_config.rope_theta is 500000.0"),
    "bfloat16 weights": ([(["compile_config", "dtype"], "bfloat16")], "input weights"),
    "two ranks": ([(["compile_config", "tensor_parallel_size"], 2)], "needs rank0/model.safetensors"),
    "no compile_config": ([], "field 'compile_config' is missing"),
}


def test_resealed_edits_that_crashed_hung_or_lied_are_each_named(compiled_dir, tmp_path):
    shutil.copytree(compiled_dir, tmp_path / "copy")
    cases = [{"set": edits, "reseal": True, **({"delete": [["compile_config"]]} if not edits else {})}
             for edits, _ in RESEALED_EDITS.values()]
    _, results = load_cases(tmp_path / "copy", cases, tmp_path)
    for (case, (_, named)), result in zip(RESEALED_EDITS.items(), results, strict=True):
        assert result.get("error") == "CompiledModelError", (case, result)
        assert named in result["message"] and (MANIFEST in result["message"] or ".pt2" in result["message"]), (case, result)


def test_a_truncated_graph_with_a_recomputed_checksum_names_its_file(compiled_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(compiled_dir, copy)
    graph = copy / GRAPHS_DIR / "decoder_batch_4.pt2"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    reseal_file_entry(copy, f"{GRAPHS_DIR}/decoder_batch_4.pt2")
    with pytest.raises(CompiledModelError, match="decoder_batch_4.pt2 is not a whole AOTInductor package"):
        AutoModelForCausalLM.from_pretrained(copy)


def test_a_truncated_kernel_library_with_a_recomputed_checksum_names_its_file_not_sigbus(compiled_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(compiled_dir, copy)
    kernels = copy / GRAPHS_DIR / library.LIBRARY_FILE
    kernels.write_bytes(kernels.read_bytes()[: kernels.stat().st_size * 2 // 3])
    reseal_file_entry(copy, f"{GRAPHS_DIR}/{library.LIBRARY_FILE}")
    _, results = load_cases(copy, [{}], tmp_path, baseline=False)  # in a child: the library maps at load
    assert results[0].get("error") == "CompiledModelError", results
    assert f"{library.LIBRARY_FILE} is truncated" in results[0]["message"]


# ---- the fuzz: every field of the manifest mutated three ways; each load gives the same tokens or a
# CompiledModelError, never a crash, a hang or other tokens ----

NEIGHBOURS = {"float32": "bfloat16", "bfloat16": "float32", "cpu": "cuda", "aoti": "eager", "eager": "aoti",
              "llama": "mistral", "auto": "float32"}


def mutations(value) -> list:
    """A wrong type, a neighbouring value and a huge value for one field."""
    if isinstance(value, bool):
        return ["yes", not value, 2**62]
    if isinstance(value, int):
        return [str(value), value + 1, 2**62]
    if isinstance(value, float):
        return [str(value), value * (1 + 1e-6), 1e308]
    if isinstance(value, str):
        return [7, NEIGHBOURS.get(value, value + "0"), value * 5000]
    if isinstance(value, list):
        return ["a list", [*value, value[-1] if value else 1], list(range(5000))]
    if isinstance(value, dict):
        return [[value], {**value, "extra": 1}, {str(i): i for i in range(5000)}]
    return ["none", 1, "x" * 5000]  # None


def field_cases(manifest: dict, sections: list[str], reseal: bool) -> list[dict]:
    """Every field of the named sections ("" for the top level) times mutations(), as manifest_loads cases."""
    cases = []
    for section in sections:
        fields = manifest if section == "" else manifest[section]
        for name, value in fields.items():
            path = [name] if section == "" else [section, name]
            cases += [{"set": [(path, mutated)], "reseal": reseal} for mutated in mutations(value)]
    return cases


def check_fuzz_results(cases: list[dict], results: list[dict], tokens: list[int]) -> None:
    for case, result in zip(cases, results, strict=True):
        assert result.get("tokens") == tokens or result.get("error") == "CompiledModelError", (case["set"], result)


def test_fuzz_every_manifest_field_of_an_eager_directory(eager_dir, tmp_path):
    """Edited without the digest recomputed (damage, a careless edit): the whole manifest."""
    shutil.copytree(eager_dir, tmp_path / "copy")
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    first_file = next(iter(manifest["files"]))
    cases = field_cases(manifest, ["", "compile_config", "model_config"], reseal=False)
    cases += [{"set": [(["files", first_file, key], mutated)], "reseal": reseal}
              for key in ("sha256", "bytes") for mutated in mutations(manifest["files"][first_file][key])
              for reseal in (False, True)]
    tokens, results = load_cases(tmp_path / "copy", cases, tmp_path)
    check_fuzz_results(cases, results, tokens)
    assert sum("tokens" in result for result in results) == 0  # every one of these edits is caught


def test_fuzz_the_options_and_model_config_of_a_compiled_directory_with_the_digest_recomputed(compiled_dir, tmp_path):
    """A deliberate edit (the digest recomputed): what is left to catch it is the compile-time validator, the
    graphs' recorded inputs and config.json."""
    shutil.copytree(compiled_dir, tmp_path / "copy")
    manifest = json.loads((tmp_path / "copy" / MANIFEST).read_text())
    cases = field_cases(manifest, ["compile_config", "model_config"], reseal=True)
    tokens, results = load_cases(tmp_path / "copy", cases, tmp_path)
    check_fuzz_results(cases, results, tokens)
