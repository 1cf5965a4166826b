"""A checkpoint's tensors as the state dict of a quantized model, built one tensor at a time.

The rule, per weight of a module quantization swaps (transform.is_quantized_module):
- blocks the file already holds in a type the layout packs as it is (GGUF Q8_0 -> int8, Q4_0 / Q4_1 -> int4)
  are kept, whatever scheme was asked: exact, where converting them would change values;
- everything else (F32, F16, BF16, GGUF's Q5_0 / Q5_1 and K-quants) is dequantized and quantized by us in
  the asked scheme (schemes.py, round-to-nearest).
Norms and biases stay float. The real SmolLM2 GGUF file (Q4_1 projections, a Q8_0 tied embedding) compiled
with quantization="int4" keeps every tensor as it is: int4 projections, an int8 embedding and lm_head.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..checkpoints.base import QuantizedBlocks, StoredTensor
from .gguf_blocks import KEPT_TYPES, pack_gguf_blocks
from .layout import PackedWeight
from .options import SCHEME_BITS
from .schemes import QUANTIZERS
from .transform import LM_HEAD, is_quantized_module, packed_state

FLOAT_TYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def stored_type(tensors: Mapping[str, StoredTensor], name: str) -> str:
    """A tensor's stored type ("Q4_1", "F32", ...), without decoding it where the checkpoint can say."""
    if hasattr(tensors, "stored_type"):
        return tensors.stored_type(name)
    tensor = tensors[name]
    return tensor.type_name if isinstance(tensor, QuantizedBlocks) else FLOAT_TYPE_NAMES.get(tensor.dtype, str(tensor.dtype))


def quantized_weights(tensors: Mapping[str, StoredTensor], tied: bool) -> list[str]:
    """Names of the weights a quantized model holds packed (a tied lm_head's is the embedding's)."""
    names = []
    for name in tensors:
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and is_quantized_module(module) and not (tied and module == LM_HEAD):
            names.append(name)
    return names


def describe_plan(tensors: Mapping[str, StoredTensor], scheme: str, tied: bool) -> dict[str, dict]:
    """What the rule does with each weight, for the manifest: {module: {"bits", "from", "kept"}}."""
    bits = SCHEME_BITS[scheme]
    described = {}
    for name in quantized_weights(tensors, tied):
        source = stored_type(tensors, name)
        kept = source in KEPT_TYPES
        described[name.removesuffix(".weight")] = {"bits": KEPT_TYPES[source] if kept else bits, "from": source,
                                                   "kept": kept}
    return described


def pack_stored(stored: StoredTensor, bits: int) -> PackedWeight:
    """One weight in the packed layout: its own blocks where their type is kept, else our RTN of its values."""
    if isinstance(stored, QuantizedBlocks):
        if stored.type_name in KEPT_TYPES:
            return pack_gguf_blocks(stored)
        stored = stored.dequantize()
    return QUANTIZERS[bits](stored)


def quantized_state(tensors: Mapping[str, StoredTensor], scheme: str, tied: bool) -> dict[str, torch.Tensor]:
    """The state dict of the quantized model: packed weights (one tensor decoded at a time, so no float copy
    of the model is ever made) and the other tensors as floats."""
    bits = SCHEME_BITS[scheme]
    packed_names = set(quantized_weights(tensors, tied))
    state: dict[str, torch.Tensor] = {}
    for name in tensors:
        stored = tensors[name]
        if name in packed_names:
            state.update(packed_state(name.removesuffix(".weight"), pack_stored(stored, bits)))
        elif not (tied and name.startswith(LM_HEAD + ".")):
            state[name] = stored.dequantize() if isinstance(stored, QuantizedBlocks) else stored
    return state
