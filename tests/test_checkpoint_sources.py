"""Where weights come from and where they live: sharded safetensors, the local HF cache, one shared copy."""
from __future__ import annotations

import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from bucketserve import AutoModelForCausalLM

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64)


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


def test_graphs_read_the_weights_loaded_once_and_decoders_one_reordered_copy(compiled_dir):
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    assert sorted(p.name for p in compiled_dir.glob("*.safetensors")) == ["model.safetensors"]
    before_prefill = logits_of(model, range(5, 45))
    before_decode = {n: model.decode([9] * n, [40] * n, [[1]] * n) for n in (1, 3, 8)}
    lm_head = model.runner.model.lm_head.weight
    # The decoders multiply through the GEMM template's reordered copy of each weight: one for all of them.
    reordered = [t for key, t in model.runner.packed_weights.items() if key[0] == lm_head.data_ptr()]
    assert len(reordered) == 1
    with torch.no_grad():
        lm_head.mul_(2.0)  # in place, on the tensor the runtime loaded once
        reordered[0].mul_(2.0)
    assert torch.allclose(logits_of(model, range(5, 45)), 2 * before_prefill, rtol=1e-4, atol=1e-4)
    for n, logits in before_decode.items():  # decoders 1, 4 and 8 all see the change
        assert torch.allclose(model.decode([9] * n, [40] * n, [[1]] * n), 2 * logits, rtol=1e-4, atol=1e-4)
