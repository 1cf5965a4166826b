"""GGUF's K-quants (Q4_K, Q5_K, Q6_K) and Q5_0 / Q5_1 kept exactly: their blocks dequantize as gguf-py's do, on
random blocks, on blocks llama.cpp's own quantizer made (tests/ggml_quantizer.py) and on the real SmolLM2
weights; a Q4_K_M-like mixed file compiles under quantization="auto" (its default) into modules of every kept
type side by side and gives the greedy tokens of its fp32 compile; bad files are refused by name."""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
import torch
from ggml_quantizer import quantize, unavailable_reason
from torch import nn

from bucketserve import AutoModelForCausalLM
from bucketserve.checkpoints import CheckpointError, QuantizedBlocks, open_checkpoint
from bucketserve.checkpoints.gguf_writer import write_gguf
from bucketserve.checkpoints.safetensors_checkpoint import map_safetensors
from bucketserve.demo.checkpoint import build_random_checkpoint
from bucketserve.demo.smollm2 import smollm2_gguf
from bucketserve.quantization import kquant_layout
from bucketserve.quantization.kquant_blocks import KQUANT_TYPES, pack_kquant_blocks
from bucketserve.quantization.kquant_modules import KQuantEmbedding, KQuantLinear
from bucketserve.quantization.modules import QuantizedLinear

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64)
PROMPT = [5, 9, 17, 33, 2, 100, 7, 250, 11]
# Where each type keeps its float16 scales (byte offsets in a block): random bytes with these set to finite
# values are valid blocks.
SCALE_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q5_0": (0,), "Q5_1": (0, 2)}
# A Q4_K_M-like mix (llama.cpp's: Q4_K for most matrices, Q6_K for the output and some attn_v / ffn_down,
# Q5_0 / Q5_1 where rows are no multiple of 256), plus a Q5_K and a Q8_0 matrix, and one left F32.
MIX = {"model.embed_tokens.weight": "Q4_K", "lm_head.weight": "Q6_K",
       "model.layers.0.self_attn.v_proj.weight": "Q6_K", "model.layers.0.mlp.down_proj.weight": "Q6_K",
       "model.layers.1.self_attn.q_proj.weight": "Q5_0", "model.layers.1.self_attn.k_proj.weight": "Q5_1",
       "model.layers.1.mlp.up_proj.weight": "Q5_K", "model.layers.1.self_attn.v_proj.weight": "Q8_0",
       "model.layers.1.self_attn.o_proj.weight": "F32"}


@pytest.fixture(scope="session")
def llama_cpp_quantizer():
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return quantize


def random_blocks(type_name: str, shape: tuple[int, int], seed: int) -> QuantizedBlocks:
    per_block, block_bytes, _, _ = KQUANT_TYPES[type_name]
    rows, cols = shape
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows, cols // per_block, block_bytes), dtype=np.uint8)
    for offset in SCALE_OFFSETS[type_name]:  # negative ones too: Q5_0's and Q6_K's zeros then differ in sign
        scales = (rng.standard_normal((rows, cols // per_block)) * 1e-3).astype(np.float16)
        blocks[:, :, offset:offset + 2] = scales.view(np.uint8).reshape(rows, cols // per_block, 2)
    return QuantizedBlocks(type_name, shape, torch.from_numpy(blocks.reshape(rows, -1)))


def assert_dequantizes_as_gguf_py(stored: QuantizedBlocks) -> None:
    """Equal to gguf-py's values; bit for bit but for the sign of a zero (kquant_blocks.py says why)."""
    packed = pack_kquant_blocks(stored)
    got = kquant_layout.dequantize(packed)
    expected = torch.from_numpy(gguf.dequantize(stored.data.numpy(), gguf.GGMLQuantizationType[stored.type_name]))
    expected = expected.view(stored.shape)
    assert torch.equal(got, expected)
    other_bits = got.view(torch.int32) != expected.view(torch.int32)
    assert bool((got[other_bits] == 0).all())
    assert packed.bits == KQUANT_TYPES[stored.type_name][2] and packed.group == KQUANT_TYPES[stored.type_name][3]


@pytest.mark.parametrize("type_name", sorted(KQUANT_TYPES))
def test_random_blocks_dequantize_as_gguf_py_does(type_name):
    assert_dequantizes_as_gguf_py(random_blocks(type_name, (37, 768), seed=len(type_name)))


@pytest.mark.parametrize("type_name", sorted(KQUANT_TYPES))
def test_blocks_llama_cpp_made_dequantize_as_gguf_py_does(llama_cpp_quantizer, type_name):
    weight = torch.randn(40, 512, generator=torch.Generator().manual_seed(3)) * 0.05
    weight[3] = 0  # an all-zero row: every scale 0
    stored = llama_cpp_quantizer(type_name, weight)
    assert_dequantizes_as_gguf_py(stored)
    assert (stored.dequantize() - weight).abs().max() < 0.02  # llama.cpp's rounding, not noise


def test_the_real_smollm2_weights_quantized_by_llama_cpp_dequantize_as_gguf_py_does(llama_cpp_quantizer):
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the real model is not installed (see bucketserve.demo.smollm2.INSTALL)")
    tensors = open_checkpoint(path).tensors
    down = tensors["model.layers.0.mlp.down_proj.weight"].dequantize()[:64]  # 1536 inputs: 6 super-blocks
    q = tensors["model.layers.0.self_attn.q_proj.weight"].dequantize()[:64]  # 576: what llama.cpp gives Q5_x
    for type_name in ("Q4_K", "Q5_K", "Q6_K"):
        assert_dequantizes_as_gguf_py(llama_cpp_quantizer(type_name, down))
    for type_name in ("Q5_0", "Q5_1"):
        assert_dequantizes_as_gguf_py(llama_cpp_quantizer(type_name, q))


def test_the_reference_linear_is_x_times_the_dequantized_weight():
    stored = random_blocks("Q5_K", (20, 256), seed=1)
    x = torch.randn(3, 256)
    expected = x @ torch.from_numpy(gguf.dequantize(stored.data.numpy(), gguf.GGMLQuantizationType.Q5_K)).T
    torch.testing.assert_close(kquant_layout.reference_linear(x, pack_kquant_blocks(stored)), expected, rtol=0, atol=0)


# ---- bad files ----
def _one_tensor_gguf(path, type_name: str, byte_shape: tuple[int, int]):
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros(byte_shape, dtype=np.uint8),
                      raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_k_quant_row_that_is_not_whole_super_blocks_is_refused_by_name(tmp_path):
    path = _one_tensor_gguf(tmp_path / "cut.gguf", "Q4_K", (4, 144))
    # gguf-py writes only whole blocks: make the row 320 weights long in the header, as a damaged file would be.
    data = path.read_bytes()
    assert data.count(struct.pack("<QQ", 256, 4)) == 1
    path.write_bytes(data.replace(struct.pack("<QQ", 256, 4), struct.pack("<QQ", 320, 4)))
    with pytest.raises(CheckpointError, match=r"cut.gguf: tensor blk.0.ffn_down.weight is Q4_K, whose rows are runs "
                                              r"of 256 weights, but its rows hold 320"):
        open_checkpoint(path)


def test_an_unknown_type_is_refused_by_name(tmp_path):
    path = _one_tensor_gguf(tmp_path / "q2k.gguf", "Q2_K", (4, 84))
    with pytest.raises(CheckpointError, match=r"q2k.gguf holds tensors of types bucketserve does not load: Q2_K "
                                              r"\(e.g. blk.0.ffn_down.weight\)"):
        open_checkpoint(path)


# ---- a mixed file, as it is ----
@pytest.fixture(scope="module")
def k_mix_gguf(llama_cpp_quantizer, tmp_path_factory):
    """A tiny Llama (widths multiples of 256) whose matrices llama.cpp quantized as MIX says, Q4_K elsewhere."""
    root = tmp_path_factory.mktemp("k-mix")
    checkpoint = build_random_checkpoint(root / "hf", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                                         num_key_value_heads=2)
    types = {}
    for name, tensor in map_safetensors(checkpoint).tensors.items():
        if tensor.dim() == 2:
            type_name = MIX.get(name, "Q4_K")
            types[name] = type_name if type_name == "F32" else llama_cpp_quantizer(type_name, tensor)
    return write_gguf(checkpoint, root / "mix.gguf", "F32", types)


def greedy(model, prompt=PROMPT, tokens=8) -> list[int]:
    return model.generate(torch.tensor([prompt]), max_new_tokens=tokens, eos_token_id=[])[0, len(prompt):].tolist()


def test_auto_keeps_every_tensor_in_its_type_and_gives_the_fp32_tokens(k_mix_gguf):
    auto = AutoModelForCausalLM.from_pretrained(k_mix_gguf, export=True, **EAGER)  # "auto": the file's default
    fp32 = AutoModelForCausalLM.from_pretrained(k_mix_gguf, export=True, quantization=None, **EAGER)
    assert (auto.compile_config.quantization, fp32.compile_config.quantization) == ("auto", None)
    recorded = auto.manifest["quantized_tensors"]
    o_proj = "model.layers.1.self_attn.o_proj"
    assert o_proj not in recorded  # F32 in the file: float in the model
    for module, entry in recorded.items():
        type_name = MIX.get(module + ".weight", "Q4_K")
        assert entry["from"] == type_name and entry["kept"]
        assert entry["layout"] == ("int8" if type_name == "Q8_0" else "kquant")
    assert {entry["bits"] for entry in recorded.values()} == {4, 5, 6, 8}
    modules = dict(auto.runner.model.named_modules())
    assert isinstance(modules["model.embed_tokens"], KQuantEmbedding)
    assert isinstance(modules["model.layers.0.mlp.down_proj"], KQuantLinear) and modules["model.layers.0.mlp.down_proj"].bits == 6
    assert isinstance(modules["model.layers.1.self_attn.q_proj"], KQuantLinear) and modules["model.layers.1.self_attn.q_proj"].bits == 5
    v_proj = modules["model.layers.1.self_attn.v_proj"]
    assert isinstance(v_proj, QuantizedLinear) and not isinstance(v_proj, KQuantLinear) and v_proj.bits == 8
    assert type(modules[o_proj]) is not QuantizedLinear and isinstance(modules[o_proj].weight, nn.Parameter)
    # The same values, up to summation order: the same greedy tokens.
    torch.testing.assert_close(auto.prefill(PROMPT, [1]).logits, fp32.prefill(PROMPT, [1]).logits, rtol=1e-4, atol=1e-4)
    assert greedy(auto) == greedy(fp32)


def test_a_scheme_asked_keeps_k_blocks_and_quantizes_only_float_weights(k_mix_gguf):
    int8 = AutoModelForCausalLM.from_pretrained(k_mix_gguf, export=True, quantization="int8", **EAGER)
    recorded = int8.manifest["quantized_tensors"]
    assert recorded["model.layers.1.self_attn.o_proj"] == {"bits": 8, "from": "F32", "kept": False, "layout": "int8"}
    assert recorded["model.layers.0.mlp.down_proj"] == {"bits": 6, "from": "Q6_K", "kept": True, "layout": "kquant"}


def test_the_compiled_mixed_model_reloads_and_gives_the_fp32_tokens(k_mix_gguf, tmp_path):
    """AOTInductor graphs calling the K kernel beside the int8 one, saved and loaded again (the plan read back
    from model.safetensors), with the kernel library in the directory."""
    AutoModelForCausalLM.from_pretrained(k_mix_gguf, export=True, batch_size=1, max_seq_len=64,
                                         prefill_chunk_size=16).save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "graphs" / "bucketserve_kernels.so").is_file()
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert isinstance(model.runner.model.model.layers[0].mlp.down_proj, KQuantLinear)
    fp32 = AutoModelForCausalLM.from_pretrained(k_mix_gguf, export=True, quantization=None, **EAGER)
    assert greedy(model) == greedy(fp32)


def test_float_checkpoints_keep_float_weights_by_default(tiny_checkpoint, tmp_path):
    float_gguf = write_gguf(tiny_checkpoint, tmp_path / "f16.gguf", "F16")
    for source in (tiny_checkpoint, float_gguf):
        model = AutoModelForCausalLM.from_pretrained(source, export=True, **EAGER)
        assert model.compile_config.quantization is None and model.manifest.get("quantized_tensors") is None
