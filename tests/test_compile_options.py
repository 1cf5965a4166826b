"""Compile options: defaults, normalization, the rbln_ spellings, and every rule from_pretrained enforces.

Rules are checked at the edge, before anything compiles, so these tests use compiler="eager".
"""
from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file

from bucketserve import AutoModelForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
from bucketserve.demo.checkpoint import build_random_checkpoint


def compile_eager(checkpoint, **options):
    return AutoModelForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", **options)


# ---- decoder_batch_sizes ----
def test_decoder_batch_sizes_default_to_batch_size(tiny_checkpoint):
    model = compile_eager(tiny_checkpoint, batch_size=4, max_seq_len=64)
    assert model.rbln_config.decoder_batch_sizes == (4,)
    assert model.decoder_batch_size_for(3) == 4


def test_decoder_batch_sizes_are_deduplicated_and_sorted_descending(tiny_checkpoint):
    model = compile_eager(tiny_checkpoint, batch_size=8, max_seq_len=64, decoder_batch_sizes=[1, 4, 8, 4, 1])
    assert model.rbln_config.decoder_batch_sizes == (8, 4, 1)
    assert model.compile_config is model.rbln_config
    assert sorted(model.runner.decode_steps_per_decoder) == [1, 4, 8]
    assert [model.decoder_batch_size_for(n) for n in range(1, 9)] == [1, 4, 4, 4, 8, 8, 8, 8]


def test_decoder_batch_size_above_batch_size_is_an_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="decoder_batch_sizes value 16 is larger than batch_size 8"):
        compile_eager(tiny_checkpoint, batch_size=8, max_seq_len=64, decoder_batch_sizes=[16, 8, 1])


def test_missing_batch_size_is_added_with_a_warning(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        model = compile_eager(tiny_checkpoint, batch_size=8, max_seq_len=64, decoder_batch_sizes=[2, 1])
    assert model.rbln_config.decoder_batch_sizes == (8, 2, 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "decoder_batch_sizes" in r.getMessage()]
    assert len(warnings) == 1 and "8" in warnings[0].getMessage()


def test_batch_size_present_logs_no_warning(tiny_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        compile_eager(tiny_checkpoint, batch_size=8, max_seq_len=64, decoder_batch_sizes=[8, 2])
    assert not [r for r in caplog.records if "decoder_batch_sizes" in r.getMessage()]


@pytest.mark.parametrize("sizes", [[8, 2.0], [8, "4"], [8, 0], [8, -1], [8, True], 8, "8"])
def test_decoder_batch_sizes_must_be_a_list_of_positive_integers(tiny_checkpoint, sizes):
    with pytest.raises(ValueError, match="decoder_batch_sizes"):
        compile_eager(tiny_checkpoint, batch_size=8, max_seq_len=64, decoder_batch_sizes=sizes)


# ---- lengths, blocks and chunks ----
def test_kv_cache_defaults_to_blocks_of_16_for_every_sequence_plus_the_dummy_block(tiny_checkpoint):
    config = compile_eager(tiny_checkpoint, batch_size=3, max_seq_len=64).rbln_config
    assert config.kvcache_block_size == 16
    assert config.kvcache_num_blocks == 3 * 4 + 1
    config = compile_eager(tiny_checkpoint, batch_size=3, max_seq_len=64, kvcache_block_size=64).rbln_config
    assert config.kvcache_num_blocks == 3 + 1
    # 16 must divide max_seq_len; otherwise one block per sequence, as before.
    assert compile_eager(tiny_checkpoint, batch_size=3, max_seq_len=40).rbln_config.kvcache_block_size == 40


def test_max_seq_len_above_max_position_embeddings_is_an_error(tmp_path):
    checkpoint = build_random_checkpoint(tmp_path, max_position_embeddings=128)
    with pytest.raises(ValueError, match="max_seq_len 256 exceeds the checkpoint's max_position_embeddings 128"):
        compile_eager(checkpoint, max_seq_len=256)
    assert compile_eager(checkpoint, max_seq_len=128).rbln_config.max_seq_len == 128


def test_max_seq_len_must_be_a_multiple_of_the_block_size(tiny_checkpoint):
    with pytest.raises(ValueError, match="max_seq_len 100 is not a multiple of kvcache_block_size 32"):
        compile_eager(tiny_checkpoint, max_seq_len=100, kvcache_block_size=32)


@pytest.mark.parametrize("chunk", [0, -4, 65, 16.0])
def test_prefill_chunk_size_must_be_within_max_seq_len(tiny_checkpoint, chunk):
    with pytest.raises(ValueError, match="prefill_chunk_size"):
        compile_eager(tiny_checkpoint, max_seq_len=64, prefill_chunk_size=chunk)


def test_prefill_chunk_size_may_equal_max_seq_len(tiny_checkpoint):
    assert compile_eager(tiny_checkpoint, max_seq_len=64, prefill_chunk_size=64).rbln_config.prefill_chunk_size == 64


def test_too_few_kv_blocks_is_an_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="kvcache_num_blocks 4 cannot hold one full sequence"):
        compile_eager(tiny_checkpoint, max_seq_len=64, kvcache_block_size=16, kvcache_num_blocks=4)


def test_more_kv_slots_than_a_cache_can_index_is_an_error(tiny_checkpoint):
    # 2^62 blocks (a fuzzed manifest found it) would reach torch.zeros as a size that does not fit an int64.
    with pytest.raises(ValueError, match=f"kvcache_num_blocks {2**62} of kvcache_block_size 16 make"):
        compile_eager(tiny_checkpoint, max_seq_len=64, kvcache_block_size=16, kvcache_num_blocks=2**62)


def test_mistral_max_seq_len_above_its_sliding_window_is_an_error(tmp_path):
    checkpoint = build_random_checkpoint(tmp_path, model_type="mistral", sliding_window=64)
    with pytest.raises(ValueError, match="max_seq_len 128 exceeds the checkpoint's sliding_window 64"):
        MistralForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", max_seq_len=128)
    model = MistralForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", max_seq_len=64)
    assert model.rbln_config.max_seq_len == 64


@pytest.mark.parametrize("settings, window", [
    (dict(use_sliding_window=False), None),
    (dict(use_sliding_window=True, max_window_layers=2), None),  # 2 layers, none from layer 2 on: none slides
    (dict(use_sliding_window=True, max_window_layers=1), 64),  # layer 1 slides
    (dict(layer_types=["full_attention", "full_attention"]), None),
    (dict(layer_types=["full_attention", "sliding_attention"]), 64),
])
def test_a_qwen2_window_counts_only_where_a_layer_slides(tiny_checkpoint, settings, window):
    import json

    from bucketserve.models.config import ModelConfig

    hf = {**json.loads((tiny_checkpoint / "config.json").read_text()), "model_type": "qwen2", "sliding_window": 64,
          "num_hidden_layers": 2, **settings}
    assert ModelConfig.from_hf_dict(hf).sliding_window == window


def test_swish_is_silu_and_other_activations_are_refused(tiny_checkpoint):
    import json

    from bucketserve.models.config import ModelConfig

    hf = json.loads((tiny_checkpoint / "config.json").read_text())
    assert ModelConfig.from_hf_dict({**hf, "hidden_act": "swish"}).model_type == "llama"
    with pytest.raises(ValueError, match="hidden_act 'gelu' is not supported"):
        ModelConfig.from_hf_dict({**hf, "hidden_act": "gelu"})


# ---- names, spellings and values ----
@pytest.mark.parametrize("options", [{"batch_sise": 4}, {"rbln_max_len": 64}, {"rbln_config": {"blocks": 4}}])
def test_unknown_options_are_errors(tiny_checkpoint, options):
    with pytest.raises(ValueError, match="unknown compile option"):
        compile_eager(tiny_checkpoint, **options)


@pytest.mark.parametrize("option, value", [("dtype", "float16"), ("dtype", torch.float32), ("device", "tpu"), ("compiler", "tvm")])
def test_unknown_dtype_device_or_compiler_is_an_error(tiny_checkpoint, option, value):
    with pytest.raises(ValueError, match=f"unknown {option}"):
        AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, max_seq_len=64, **{option: value})


def test_rbln_prefixed_options_and_rbln_config_work(tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint, export=True, rbln_compiler="eager", rbln_batch_size=4, rbln_max_seq_len=64,
        rbln_config={"rbln_decoder_batch_sizes": [4, 1], "prefill_chunk_size": 16},
    )
    config = model.rbln_config
    assert (config.batch_size, config.max_seq_len, config.prefill_chunk_size) == (4, 64, 16)
    assert config.decoder_batch_sizes == (4, 1)


def test_rbln_config_none_is_no_config_and_a_non_dict_is_named(tiny_checkpoint):
    assert compile_eager(tiny_checkpoint, max_seq_len=64, rbln_config=None).rbln_config.max_seq_len == 64
    with pytest.raises(ValueError, match="rbln_config must be a dict of compile options, got 5"):
        compile_eager(tiny_checkpoint, max_seq_len=64, rbln_config=5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_cuda_without_a_cuda_torch_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="device 'cuda' was asked for, but this torch .* sees no CUDA device"):
        compile_eager(tiny_checkpoint, max_seq_len=64, device="cuda")


@pytest.mark.parametrize("options", [
    {"batch_size": 4, "rbln_batch_size": 4},
    {"batch_size": 4, "rbln_config": {"batch_size": 4}},
    {"rbln_batch_size": 4, "rbln_config": {"rbln_batch_size": 2}},
])
def test_an_option_given_twice_is_an_error(tiny_checkpoint, options):
    with pytest.raises(ValueError, match="'batch_size' was given twice \\(as .*batch_size.* and as .*batch_size.*\\)"):
        compile_eager(tiny_checkpoint, max_seq_len=64, **options)


@pytest.mark.parametrize("tp, message", [
    (3, "num_attention_heads 4 does not divide by tensor_parallel_size 3"),
    (8, "num_attention_heads 4 does not divide by tensor_parallel_size 8"),
])
def test_tensor_parallel_size_must_split_the_heads(tiny_checkpoint, tp, message):
    with pytest.raises(ValueError, match=message):
        compile_eager(tiny_checkpoint, max_seq_len=64, tensor_parallel_size=tp)
    assert compile_eager(tiny_checkpoint, max_seq_len=64, rbln_tensor_parallel_size=1).rbln_config.tensor_parallel_size == 1


@pytest.mark.parametrize("option", ["batch_size", "max_seq_len", "kvcache_block_size"])
@pytest.mark.parametrize("value", [0, -1, 2.5, "8", True])
def test_sizes_must_be_positive_integers(tiny_checkpoint, option, value):
    with pytest.raises(ValueError, match=option):
        compile_eager(tiny_checkpoint, **{"max_seq_len": 64, option: value})


# ---- the checkpoint ----
def test_a_missing_model_id_says_where_it_looked(tmp_path):
    from huggingface_hub import constants

    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError) as error:
        AutoModelForCausalLM.from_pretrained(missing, export=True)
    assert str(missing) in str(error.value) and constants.HF_HUB_CACHE in str(error.value)
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        AutoModelForCausalLM.from_pretrained("no-such-org/no-such-model", export=True)


def test_a_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path, monkeypatch):
    checkpoint = build_random_checkpoint(tmp_path)
    torch.save(load_file(checkpoint / "model.safetensors"), checkpoint / "pytorch_model.bin")
    (checkpoint / "model.safetensors").unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("pickle weights must never be loaded")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(FileNotFoundError, match="pytorch_model.bin") as error:
        compile_eager(checkpoint, max_seq_len=64)
    assert "safetensors" in str(error.value)


def test_a_class_for_another_model_type_is_an_error(tiny_checkpoint):
    with pytest.raises(ValueError, match="model_type 'llama'.*AutoModelForCausalLM"):
        Qwen2ForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", max_seq_len=64)
    model = LlamaForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", max_seq_len=64)
    assert model.config.model_type == "llama"


def test_a_checkpoint_without_tokenizer_files_compiles_with_a_warning(tiny_checkpoint, tmp_path, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(tiny_checkpoint, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json",
                                                                          "vocab.json", "merges.txt", "chat_template*"))
    with caplog.at_level(logging.WARNING):
        compile_eager(bare, max_seq_len=64)
    assert "has no tokenizer files" in caplog.text and "tokenizer=" in caplog.text


# ---- options against a compiled directory: one normalizer (compiled_options.py) for from_pretrained(dir),
# LLM(...) and the server, comparing what a compile would make of the options with what was compiled ----
def test_the_compiled_options_in_any_spelling_are_accepted_by_both_entrypoints(eager_dir):
    from bucketserve import LLM

    compiled = AutoModelForCausalLM.from_pretrained(eager_dir).rbln_config
    same = dict(kv_cache_dtype="fp32", dtype="float32", decoder_batch_sizes=[1, 4, 8, 4],
                rbln_quantization={"weights": None, "kv_caches": "float32"}, rbln_config={"max_seq_len": compiled.max_seq_len})
    assert AutoModelForCausalLM.from_pretrained(eager_dir, **same).rbln_config == compiled
    llm = LLM(model=str(eager_dir), max_num_seqs=compiled.batch_size, max_model_len=compiled.max_seq_len,
              block_size=compiled.max_seq_len, dtype="float32", device="cpu", tensor_parallel_size=1)
    assert llm.model.rbln_config == compiled


@pytest.mark.parametrize("entrypoint", ["from_pretrained", "LLM"])
@pytest.mark.parametrize("option, value, message", [
    # Equal to the compiled value as numbers, but no value a compile takes: refused as a compile refuses it.
    ("batch_size", 8.0, "batch_size must be an integer >= 1, got 8.0"),
    ("max_seq_len", True, "max_seq_len must be an integer >= 1, got True"),
    # Valid, and different from what was compiled: named as the user spelled it, with the compiled value.
    ("batch_size", 4, "=4 was given, but it differs from the compiled batch_size=8"),
    ("dtype", "bfloat16", "dtype='bfloat16' was given, but it differs from the compiled dtype='float32'"),
])
def test_options_are_validated_as_a_compile_would_then_compared(eager_dir, entrypoint, option, value, message):
    from bucketserve import LLM

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        if entrypoint == "LLM":
            vllm_name = {"batch_size": "max_num_seqs", "max_seq_len": "max_model_len"}.get(option, option)
            LLM(model=str(eager_dir), **{vllm_name: value})
        else:
            AutoModelForCausalLM.from_pretrained(eager_dir, **{option: value})


def test_quantization_none_is_float_weights_when_loading_too(eager_dir, tiny_checkpoint, tmp_path):
    assert AutoModelForCausalLM.from_pretrained(eager_dir, quantization=None).rbln_config.quantization is None
    compile_eager(tiny_checkpoint, max_seq_len=64, quantization="int8").save_pretrained(tmp_path / "int8")
    with pytest.raises(ValueError, match="quantization=None was given, but it differs from the compiled quantization='int8'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "int8", quantization=None)
