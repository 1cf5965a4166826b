"""Where weights come from and where they live: sharded safetensors, the local HF cache, our mappings of
the files, one reordered copy that the compiled graphs read."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bucketserve import AutoModelForCausalLM
from bucketserve.checkpoints import CheckpointError
from bucketserve.checkpoints.safetensors_checkpoint import MappedWeights

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64, kvcache_block_size=64)  # logits_of uses one block


def logits_of(model, token_ids=(5, 6, 7)) -> torch.Tensor:
    return model.prefill(list(token_ids), [1]).logits


def test_sharded_safetensors_checkpoint_loads_like_the_single_file(tiny_checkpoint, tmp_path):
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoint, sharded)
    state = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, sharded / file)
    weight_map = {k: file for file, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, **EAGER)
    from_shards = AutoModelForCausalLM.from_pretrained(sharded, export=True, **EAGER)
    assert torch.equal(logits_of(single), logits_of(from_shards))


def test_a_hub_id_resolves_through_the_local_hf_cache_only(tiny_checkpoint, tmp_path, monkeypatch):
    # The layout huggingface_hub writes: models--{org}--{name}/snapshots/{revision}/ and refs/main.
    cache = tmp_path / "hub"
    repo = cache / "models--someorg--tiny-llama"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    model = AutoModelForCausalLM.from_pretrained("someorg/tiny-llama", export=True, **EAGER)
    local = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, **EAGER)
    assert torch.equal(logits_of(model), logits_of(local))


def test_compiled_graphs_read_one_reordered_copy_of_each_projection_weight_and_not_the_plain_one(compiled_dir):
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    assert sorted(p.name for p in compiled_dir.glob("*.safetensors")) == ["model.safetensors"]
    before_prefill = logits_of(model, range(5, 45))
    before_decode = {n: model.decode([9] * n, [40] * n, [[1]] * n) for n in (1, 3, 8)}
    lm_head = model.runner.model.lm_head.weight
    # The prefill and the decoders multiply through one reordered copy of each weight (packed_weights).
    reordered = [t for key, t in model.runner.packed_weights.items() if key[0] == lm_head.data_ptr()]
    assert len(reordered) == 1
    with torch.no_grad():
        lm_head.mul_(2.0)  # the plain weight, in place: no compiled graph reads it after loading
    assert torch.equal(logits_of(model, range(5, 45)), before_prefill)
    with torch.no_grad():
        reordered[0].mul_(2.0)
    assert torch.allclose(logits_of(model, range(5, 45)), 2 * before_prefill, rtol=1e-4, atol=1e-4)
    for n, logits in before_decode.items():  # decoders 1, 4 and 8 all see the change
        assert torch.allclose(model.decode([9] * n, [40] * n, [[1]] * n), 2 * logits, rtol=1e-4, atol=1e-4)


SAMPLE_TENSORS = {
    "f32": torch.randn(3, 5), "bf16": torch.randn(7).to(torch.bfloat16), "f16": torch.randn(2, 3).half(),
    "i8": torch.tensor([1, -2, 3], dtype=torch.int8), "i64": torch.arange(5), "empty": torch.empty(0, 4),
}


def test_mapped_weights_read_what_safetensors_reads_before_and_after_releasing_pages(tmp_path):
    save_file(SAMPLE_TENSORS, tmp_path / "w.safetensors")
    weights = MappedWeights([tmp_path / "w.safetensors"])
    reference = load_file(tmp_path / "w.safetensors")
    assert weights.tensors.keys() == reference.keys()
    for name, tensor in reference.items():
        assert weights.tensors[name].dtype == tensor.dtype and torch.equal(weights.tensors[name], tensor), name
    weights.release_pages()
    for name, tensor in reference.items():
        assert torch.equal(weights.tensors[name], tensor), name


def _resident_kib(path) -> int:
    """Rss of this process's mappings of `path`, from /proc/self/smaps."""
    total, inside = 0, False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = line.rstrip().endswith(str(path))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_release_pages_hands_back_what_reading_the_weights_made_resident(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"w": torch.randn(1024, 1024)}, path)  # 4 MiB
    weights = MappedWeights([path])
    assert weights.tensors["w"].sum().item() == load_file(path)["w"].sum().item()
    assert _resident_kib(path) >= 4096
    weights.release_pages()
    assert _resident_kib(path) == 0
    weights.tensors["w"].sum()  # read again: back from the file
    assert _resident_kib(path) >= 4096


def test_a_damaged_safetensors_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.randn(64, 64)}, path)
    path.write_bytes(path.read_bytes()[:-100])  # truncated: the tensor's bytes run past the end
    with pytest.raises(ValueError, match="model.safetensors: tensor w .* does not fit the file"):
        MappedWeights([path])
    path.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="is not a safetensors file"):
        MappedWeights([path])


def test_a_tied_config_with_a_distinct_lm_head_keeps_it_as_transformers_does(tmp_path):
    import transformers

    from bucketserve.demo.checkpoint import build_random_checkpoint

    checkpoint = build_random_checkpoint(tmp_path / "tied", tie_word_embeddings=True)
    state = load_file(checkpoint / "model.safetensors")
    state["lm_head.weight"] = torch.randn_like(state["model.embed_tokens.weight"])  # not the embedding
    save_file(state, checkpoint / "model.safetensors", metadata={"format": "pt"})
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([[5, 6, 7]])).logits[0, -1]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, **EAGER)
    torch.testing.assert_close(logits_of(model).reshape(-1), expected, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path / "saved")  # the manifest records it untied, so loading keeps the lm_head
    assert torch.equal(logits_of(AutoModelForCausalLM.from_pretrained(tmp_path / "saved")), logits_of(model))


def test_llama3_rope_without_its_original_context_takes_max_position_embeddings_as_transformers(tmp_path):
    import transformers

    from bucketserve.demo.checkpoint import build_random_checkpoint

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16}
    checkpoint = build_random_checkpoint(tmp_path / "llama3", rope_scaling=rope, max_position_embeddings=64)
    config = json.loads((checkpoint / "config.json").read_text())
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(config.get(key), dict):
            config[key].pop("original_max_position_embeddings", None)
    (checkpoint / "config.json").write_text(json.dumps(config))
    hf = transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokens = list(range(5, 45))  # past the 16 positions, where the two readings would differ
    with torch.no_grad():
        expected = hf(torch.tensor([tokens])).logits[0, -1]
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, **EAGER)
    torch.testing.assert_close(logits_of(model, tokens).reshape(-1), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_or_inf_weight_is_refused_naming_the_tensor_and_file(tiny_checkpoint, tmp_path, value):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(tiny_checkpoint, poisoned)
    state = load_file(poisoned / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"][3, 5] = value
    save_file(state, poisoned / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="tensor model.layers.1.mlp.down_proj.weight holds NaN or Inf") as raised:
        AutoModelForCausalLM.from_pretrained(poisoned, export=True, **EAGER)
    assert "model.safetensors" in str(raised.value)
