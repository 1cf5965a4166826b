"""activations="int8": the option in its spellings, and a model whose projections quantize their inputs at run
time (close to the weight-only model, not equal to it). The kernel itself: test_int8_activation_kernel.py."""
from __future__ import annotations

import pytest
import torch

from bucketserve import AutoModelForCausalLM
from bucketserve.entrypoints.cli import build_parser
from bucketserve.kernels import library
from bucketserve.quantization.modules import QuantizedLinear
from bucketserve.quantization.options import activation_scheme

EAGER = dict(compiler="eager", batch_size=2, max_seq_len=64)
PROMPT = [5, 9, 17, 33, 2, 100, 7, 250, 11]


@pytest.mark.parametrize("quantization, activations", [({"weights": "int4", "activations": "int8"}, None),
                                                       ("int8", "int8"),
                                                       ({"weights": "int4", "activations": "int8"}, "int8")])
def test_the_spellings_that_ask_for_int8_activations(quantization, activations):
    assert activation_scheme(quantization, activations) == "int8"


def test_weight_only_stays_the_default():
    assert activation_scheme("int4", None) is None
    assert activation_scheme({"weights": "int4", "kv_caches": "bf16"}, None) is None


@pytest.mark.parametrize("quantization, activations, message", [
    ("int4", "int4", "unknown activations quantization 'int4'; choose 'int8'"),
    ({"weights": "int4", "activations": "int8"}, "fp8", "given twice, differently"),
    (None, "int8", "give quantization='int4' or 'int8' too"),
    ({"activations": "int8"}, None, "give quantization='int4' or 'int8' too"),
])
def test_bad_spellings_are_refused_with_the_fix(quantization, activations, message):
    with pytest.raises(ValueError, match=message):
        activation_scheme(quantization, activations)


def test_the_cli_flag_is_a_compile_option():
    args = build_parser().parse_args(["compile", "some/model", "out", "--quantization", "int4", "--activations", "int8"])
    assert args.activations == "int8"


@pytest.fixture(scope="module")
def models(tiny_checkpoint):
    weight_only = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, quantization="int4", **EAGER)
    int8 = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True,
                                                rbln_quantization={"weights": "int4", "activations": "int8"}, **EAGER)
    return weight_only, int8


def test_every_projection_quantizes_its_input_and_the_config_records_it(models):
    weight_only, int8 = models
    assert weight_only.compile_config.activations is None and int8.compile_config.activations == "int8"
    linears = [m for m in int8.runner.model.modules() if isinstance(m, QuantizedLinear)]
    assert linears and all(m.activations == "int8" for m in linears)
    assert all(m.activations is None for m in weight_only.runner.model.modules() if isinstance(m, QuantizedLinear))
    assert int8.manifest["compile_config"]["activations"] == "int8"


def test_int8_activations_are_close_to_weight_only_not_equal(models):
    weight_only, int8 = models
    exact = weight_only.prefill(PROMPT, [1]).logits
    close = int8.prefill(PROMPT, [1]).logits
    relative = ((close - exact).norm() / exact.norm()).item()
    assert 0 < relative < 0.05, relative


def test_a_saved_directory_reloads_with_int8_activations(models, tmp_path):
    _, int8 = models
    int8.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.compile_config.activations == "int8"
    assert torch.equal(reloaded.prefill(PROMPT, [1]).logits, int8.prefill(PROMPT, [1]).logits)


def test_the_kernel_and_the_torch_reference_give_the_same_model(models, monkeypatch):
    """Where the library is loaded the projections run its kernel; where not (CUDA, bf16, no compiler) the
    torch reference, which must compute the same model up to fp32 rounding."""
    _, int8 = models
    assert library.build() is not None
    kernel = int8.prefill(PROMPT, [1]).logits
    monkeypatch.setattr(library, "registered_ops", lambda: [])
    reference = int8.prefill(PROMPT, [1]).logits
    torch.testing.assert_close(kernel, reference, rtol=1e-5, atol=1e-5)
