"""GGUF files in: every family and tensor type compiles from the file and matches transformers loading the same
file with gguf_file=; the tokenizer round-trips; the raw blocks reach the loader's users; bad files are refused
by name and leave nothing behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf_files import k_quant_tensor_types, patched_gguf, poisoned_gguf, write_bare_gguf

from bucketserve import AutoModelForCausalLM
from bucketserve.checkpoints import CheckpointError, QuantizedBlocks, open_checkpoint
from bucketserve.checkpoints.file_digest import sha256_of
from bucketserve.checkpoints.gguf_writer import copy_metadata, requantize_gguf, write_gguf
from bucketserve.checkpoints.safetensors_checkpoint import map_safetensors
from bucketserve.demo.checkpoint import build_random_checkpoint
from bucketserve.entrypoints.cli import main as cli_main

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64)
PROMPT = [5, 9, 17, 33, 2, 100, 7, 250, 11]
# Logits of the same weights through transformers and through our model differ by float summation order only.
LOGIT_TOLERANCE = dict(rtol=1e-4, atol=1e-4)
FAMILIES = {
    "llama": {},
    "mistral": {},
    "qwen2": {},  # q/k/v biases
    # transformers reads no head_dim from a qwen3 GGUF (its default, 128, is every real Qwen3's): use that one.
    "qwen3": dict(head_dim=128, num_attention_heads=2, num_key_value_heads=1),  # q/k norms
}


def hf_from_gguf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def hf_logits(model, prompt=PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0, -1]


def ours(path: Path, **options):
    return AutoModelForCausalLM.from_pretrained(path, export=True, **{**EAGER, **options})


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    """One GGUF file per family: its attention weights Q8_0, its MLP weights Q4_0, the rest F32."""
    files = {}
    for family, settings in FAMILIES.items():
        root = tmp_path_factory.mktemp(f"gguf-{family}")
        checkpoint = build_random_checkpoint(root / "hf", model_type=family, **settings)
        mlp = {name: "Q4_0" for name in map_safetensors(checkpoint).tensors if ".mlp." in name}
        files[family] = (checkpoint, write_gguf(checkpoint, root / f"{family}.gguf", "Q8_0", mlp))
    return files


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_each_family_matches_transformers_on_the_same_file(family_files, family):
    _, path = family_files[family]
    reference = hf_from_gguf(path)
    model = ours(path)
    assert model.model_config.model_type == family
    torch.testing.assert_close(model.prefill(PROMPT, [1]).logits, hf_logits(reference), **LOGIT_TOLERANCE)
    greedy = model.generate(torch.tensor([PROMPT]), max_new_tokens=8)[0, len(PROMPT):].tolist()
    expected = reference.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(PROMPT):].tolist()
    assert greedy == expected


def test_a_mistral_file_matches_transformers_on_the_same_weights(family_files, tmp_path):
    """transformers (5.x with gguf-py 0.19) cannot open a Mistral GGUF ("Unknown gguf model_type: mistral in
    gguf-py"). A Mistral inside its window computes what Llama does, so the reference is transformers on the same
    tensors written without the name that marks them Mistral (a llama file)."""
    checkpoint, path = family_files["mistral"]
    model = ours(path)
    assert model.model_config.model_type == "mistral"
    reader = gguf.GGUFReader(path)
    as_llama = tmp_path / "as-llama.gguf"
    writer = gguf.GGUFWriter(str(as_llama), "llama")
    copy_metadata(reader, writer, prefixes=("llama.", "tokenizer."))  # not general.name, which says Mistral
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reference = hf_from_gguf(as_llama)
    assert reference.config.model_type == "llama"
    torch.testing.assert_close(model.prefill(PROMPT, [1]).logits, hf_logits(reference), **LOGIT_TOLERANCE)


@pytest.fixture(scope="module")
def wide_checkpoint(tmp_path_factory):
    """Rows of 256 and 512 weights, as K-quants need (blocks of 256)."""
    return build_random_checkpoint(tmp_path_factory.mktemp("gguf-wide"), hidden_size=256, intermediate_size=512,
                                   num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("weight_type", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"])
def test_every_tensor_type_loads_and_matches_transformers(wide_checkpoint, tmp_path, weight_type):
    if weight_type.endswith("_K"):  # gguf-py cannot quantize to K-quants: random valid blocks instead
        path = write_gguf(wide_checkpoint, tmp_path / "m.gguf", "F32", k_quant_tensor_types(wide_checkpoint, weight_type))
    else:
        path = write_gguf(wide_checkpoint, tmp_path / "m.gguf", weight_type)
    checkpoint = open_checkpoint(path)
    weights = [name for name, t in map_safetensors(wide_checkpoint).tensors.items() if t.dim() == 2]
    assert len(weights) == 2 + 7 * 2 and {checkpoint.tensors.stored_type(name) for name in weights} == {weight_type}
    model = ours(path)
    torch.testing.assert_close(model.prefill(PROMPT, [1]).logits, hf_logits(hf_from_gguf(path)), **LOGIT_TOLERANCE)


def test_quantized_tensors_reach_the_loader_as_their_own_blocks(family_files):
    _, path = family_files["llama"]
    checkpoint = open_checkpoint(path)
    reader = gguf.GGUFReader(path)
    stored = {t.name: t for t in reader.tensors}
    down = checkpoint.tensors["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(down, QuantizedBlocks) and down.type_name == "Q4_0"
    assert np.array_equal(down.data.numpy(), stored["blk.0.ffn_down.weight"].data)  # the file's bytes, as they are
    assert torch.equal(down.dequantize(), torch.from_numpy(gguf.dequantize(stored["blk.0.ffn_down.weight"].data, gguf.GGMLQuantizationType.Q4_0)))
    # llama's q rows come back in transformers' order: the same values transformers loads.
    q = checkpoint.tensors["model.layers.0.self_attn.q_proj.weight"]
    assert q.type_name == "Q8_0"
    reference = hf_from_gguf(path).model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q.dequantize(), reference)
    assert checkpoint.tensors["model.norm.weight"].dtype == torch.float32


def test_the_compiled_directory_keeps_the_tokenizer_and_records_the_source(family_files, tmp_path):
    _, path = family_files["llama"]
    model = ours(path)
    model.save_pretrained(tmp_path / "out")
    ours_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    reference = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in ["Tell me about rain.", "the of and to  in", "ünïcødé, émoji 🙂 and\ttabs\n", "<|im_start|>user\nHi<|im_end|>"]:
        assert ours_tokenizer.encode(text) == reference.encode(text)
        assert ours_tokenizer.decode(reference.encode(text)) == reference.decode(reference.encode(text))
    chat = [{"role": "user", "content": "Hello there"}]
    assert ours_tokenizer.apply_chat_template(chat, tokenize=False) == reference.apply_chat_template(chat, tokenize=False)
    source = json.loads((tmp_path / "out" / "bucketserve_manifest.json").read_text())["source"]
    assert (source["format"], source["file"], source["bytes"]) == ("gguf", path.name, path.stat().st_size)
    assert source["sha256"] == sha256_of(path)
    assert source["tensor_types"]["blk.0.ffn_up.weight"] == "Q4_0" and source["tensor_types"]["blk.0.attn_v.weight"] == "Q8_0"
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").to_dict().get("quantization_config") is None


def test_gguf_file_inside_a_directory_as_transformers_spells_it(family_files):
    _, path = family_files["qwen2"]
    by_dir = AutoModelForCausalLM.from_pretrained(path.parent, export=True, gguf_file=path.name, **EAGER)
    by_path = ours(path)
    assert torch.equal(by_dir.prefill(PROMPT, [1]).logits, by_path.prefill(PROMPT, [1]).logits)


def _bad_files(family_files, tmp_path) -> dict[str, tuple[Path, type, str]]:
    _, good = family_files["llama"]
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size - 1000])
    header_only = tmp_path / "header-only.gguf"
    header_only.write_bytes(good.read_bytes()[:100])
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a gguf" * 10)
    checkpoint, _ = family_files["llama"]
    embedding = map_safetensors(checkpoint).tensors["model.embed_tokens.weight"]
    iq4 = QuantizedBlocks("IQ4_NL", tuple(embedding.shape), torch.zeros(embedding.shape[0], embedding.shape[1] // 32 * 18, dtype=torch.uint8))
    return {
        "truncated": (truncated, CheckpointError, "truncated"),
        "header only": (header_only, CheckpointError, "truncated or damaged"),
        "not gguf": (not_gguf, CheckpointError, "is not a GGUF file"),
        "architecture": (write_bare_gguf(tmp_path / "gpt2.gguf", "gpt2"), CheckpointError, "architecture 'gpt2' is not supported"),
        "tensor type": (write_gguf(checkpoint, tmp_path / "iq4.gguf", "F32", {"model.embed_tokens.weight": iq4}),
                        CheckpointError, "IQ4_NL"),
        "no tokenizer": (write_bare_gguf(tmp_path / "no-tokenizer.gguf", "llama"), CheckpointError, "has no tokenizer"),
        "missing": (tmp_path / "absent.gguf", FileNotFoundError, "does not exist"),
    }


def test_bad_files_are_refused_by_name_and_leave_nothing_behind(family_files, tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("bucketserve-*"))
    for case, (path, error, message) in _bad_files(family_files, tmp_path).items():
        with pytest.raises(error, match=message) as raised:
            ours(path)
        assert path.name in str(raised.value), case
    assert set(Path(tempfile.gettempdir()).glob("bucketserve-*")) == before  # no half-compiled directory left


def test_a_gguf_file_that_is_not_in_the_directory_lists_those_that_are(family_files):
    _, path = family_files["llama"]
    with pytest.raises(FileNotFoundError, match=rf"'other.gguf' does not exist in .* \(GGUF files there: {path.name}\)"):
        AutoModelForCausalLM.from_pretrained(path.parent, export=True, gguf_file="other.gguf")


def test_a_gguf_file_is_compiled_not_loaded(family_files):
    _, path = family_files["llama"]
    with pytest.raises(ValueError, match="compile it first"):
        AutoModelForCausalLM.from_pretrained(path)


def test_cli_compiles_a_gguf_file_and_refuses_a_bad_one_in_one_line(family_files, tmp_path, capsys, monkeypatch):
    _, path = family_files["qwen3"]
    assert cli_main(["compile", str(path), str(tmp_path / "out"), "--compiler", "eager", "--max-seq-len", "64"]) == 0
    assert json.loads((tmp_path / "out" / "bucketserve_manifest.json").read_text())["source"]["file"] == path.name
    assert cli_main(["generate", str(tmp_path / "out"), "Hello", "--max-tokens", "3"]) == 0
    turns = iter(["Hello", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(turns))
    assert cli_main(["chat", str(tmp_path / "out"), "--max-tokens", "3"]) == 0  # its GGUF chat template
    assert capsys.readouterr().out.count("model> ") == 1
    assert cli_main(["chat", str(path)]) == 1  # a GGUF file is compiled first: the error says how
    assert "bucketserve compile MODEL OUT" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    capsys.readouterr()
    assert cli_main(["compile", str(bad), str(tmp_path / "bad-out"), "--compiler", "eager"]) == 2  # a bad file: 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.gguf is not a GGUF file" in err
    assert not (tmp_path / "bad-out").exists()


@pytest.mark.parametrize("weight_type", ["Q8_0", "Q4_0"])
def test_a_requantized_file_is_the_same_model_in_another_type(family_files, tmp_path, weight_type):
    """The benchmark's way to give llama.cpp and bucketserve the same weights at the same bits."""
    _, path = family_files["llama"]  # attention Q8_0, MLP Q4_0
    again = requantize_gguf(path, tmp_path / "again.gguf", weight_type)
    checkpoint = open_checkpoint(again)
    matrices = [n for n in checkpoint.tensors if n.endswith(("proj.weight", "embed_tokens.weight", "lm_head.weight"))]
    assert {checkpoint.tensors.stored_type(n) for n in matrices} == {weight_type}
    assert {checkpoint.tensors.stored_type(n) for n in checkpoint.tensors if n not in matrices} == {"F32"}
    original = open_checkpoint(path)
    kept = "model.layers.0.mlp.up_proj.weight" if weight_type == "Q4_0" else "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(checkpoint.tensors[kept].data, original.tensors[kept].data)  # already that type: untouched
    torch.testing.assert_close(ours(again).prefill(PROMPT, [1]).logits, hf_logits(hf_from_gguf(again)), **LOGIT_TOLERANCE)


# Address space for the child that opens a 2^31-layer claim: a name table built for the claimed count runs into
# it as a MemoryError within seconds, instead of growing until the machine has no memory left.
CHILD_ADDRESS_SPACE = 8 << 30


def test_a_block_count_of_2_31_is_one_line_from_the_cli_and_exit_2(family_files, tmp_path):
    _, good = family_files["llama"]
    bomb = patched_gguf(good, tmp_path / "bomb.gguf", "llama.block_count", 2**31)
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({CHILD_ADDRESS_SPACE}, {CHILD_ADDRESS_SPACE}))"
    script = f"{limit}; import sys; from bucketserve.entrypoints.cli import main; sys.exit(main(sys.argv[1:]))"
    child = subprocess.run([sys.executable, "-c", script, "compile", str(bomb), str(tmp_path / "out"), "--compiler", "eager"],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    err = child.stderr.strip().splitlines()
    assert child.returncode == 2, child.stderr[-2000:]
    assert len(err) == 1 and "bomb.gguf" in err[0] and "llama.block_count is 2147483648" in err[0], err
    assert "layers 0 to 1" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, named", [
    ("llama.attention.head_count", 0, "llama.attention.head_count is 0"),
    ("llama.attention.head_count", 3, "head_count_kv is 2, which does not divide llama.attention.head_count 3"),
    ("llama.attention.head_count_kv", 0, "llama.attention.head_count_kv is 0"),
    ("llama.embedding_length", 65, "llama.embedding_length is 65"),
    ("llama.context_length", 0, "llama.context_length is 0"),
    ("llama.rope.freq_base", float("nan"), "llama.rope.freq_base is nan"),
    # Counts that divide but do not fit the tensors: the first tensor whose shape they change is named.
    ("llama.attention.head_count", 8, "has shape [64, 64], but the metadata makes model.layers.0.self_attn."),
    ("llama.feed_forward_length", 96, "tensor blk.0.ffn_down.weight has shape [64, 128]"),
])
def test_bad_metadata_is_a_checkpoint_error_naming_file_key_and_value(family_files, tmp_path, key, value, named):
    _, good = family_files["llama"]
    path = patched_gguf(good, tmp_path / "patched.gguf", key, value)
    with pytest.raises(CheckpointError) as raised:
        ours(path)
    assert "patched.gguf" in str(raised.value) and named in str(raised.value)


@pytest.mark.parametrize("tensor_name, stored_as", [("output_norm.weight", "F32"), ("blk.1.attn_k.weight", "Q8_0"),
                                                     ("blk.0.ffn_up.weight", "Q4_0")])
def test_nan_or_inf_weights_are_refused_naming_the_tensor(family_files, tmp_path, tensor_name, stored_as):
    _, good = family_files["llama"]
    path = poisoned_gguf(good, tmp_path / "poisoned.gguf", tensor_name)
    assert next(t for t in gguf.GGUFReader(good).tensors if t.name == tensor_name).tensor_type.name == stored_as
    with pytest.raises(CheckpointError, match=f"tensor {tensor_name} holds NaN or Inf") as raised:
        ours(path)
    assert "poisoned.gguf" in str(raised.value)
