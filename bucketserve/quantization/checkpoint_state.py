"""A checkpoint's tensors as the state dict of a quantized model, built one tensor at a time.

The rule, per weight of a module quantization swaps (transform.is_quantized_module):
- blocks the file already holds in a type a layout packs as it is are kept, whatever scheme was asked: exact,
  where converting them would change values. GGUF Q8_0 -> int8, Q4_0 / Q4_1 -> int4 (layout.py); Q4_K, Q5_K,
  Q6_K, Q5_0, Q5_1 -> the K layout (kquant_layout.py), so a hub's Q4_K_M file runs as it is;
- everything else (F32, F16, BF16) is quantized by us in the asked scheme (schemes.py, round-to-nearest),
  except under "auto" (the default for a GGUF whose matrices are quantized), where it stays float.
Norms and biases stay float. The real SmolLM2 GGUF file (Q4_1 projections, a Q8_0 tied embedding) compiled
with quantization="int4" keeps every tensor as it is: int4 projections, an int8 embedding and lm_head.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from ..checkpoints.base import QuantizedBlocks, StoredTensor
from .gguf_blocks import KEPT_TYPES, pack_gguf_blocks
from .kquant_blocks import KQUANT_TYPES, pack_kquant_blocks
from .kquant_layout import KPackedWeight
from .layout import PackedWeight
from .options import SCHEME_BITS
from .schemes import QUANTIZERS
from .transform import LM_HEAD, is_quantized_module, packed_state

FLOAT_TYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
AUTO = "auto"  # keep every weight in its file's type: kept blocks packed, float weights float


def kept_bits(type_name: str) -> int | None:
    """Bits a value of a type kept as it is holds (Q8_0 8, Q4_K 4, Q6_K 6, ...); None where it is not kept."""
    if type_name in KEPT_TYPES:
        return KEPT_TYPES[type_name]
    return KQUANT_TYPES[type_name][2] if type_name in KQUANT_TYPES else None


def stored_type(tensors: Mapping[str, StoredTensor], name: str) -> str:
    """A tensor's stored type ("Q4_1", "F32", ...), without decoding it where the checkpoint can say."""
    if hasattr(tensors, "stored_type"):
        return tensors.stored_type(name)
    tensor = tensors[name]
    return tensor.type_name if isinstance(tensor, QuantizedBlocks) else FLOAT_TYPE_NAMES.get(tensor.dtype, str(tensor.dtype))


def quantized_weights(tensors: Mapping[str, StoredTensor], tied: bool, scheme: str) -> list[str]:
    """Names of the weights a quantized model holds packed (a tied lm_head's is the embedding's); under "auto"
    only those whose type is kept."""
    names = []
    for name in tensors:
        module, _, leaf = name.rpartition(".")
        if leaf == "weight" and is_quantized_module(module) and not (tied and module == LM_HEAD):
            if scheme != AUTO or kept_bits(stored_type(tensors, name)) is not None:
                names.append(name)
    return names


def default_quantization(checkpoint) -> str | None:
    """"auto" for a checkpoint any of whose matrices the file stores quantized (a GGUF's), else None (float)."""
    tensors = checkpoint.tensors
    candidates = quantized_weights(tensors, tied=False, scheme="int8")
    return AUTO if any(stored_type(tensors, name) not in FLOAT_TYPE_NAMES.values() for name in candidates) else None


def layout_of(type_name: str) -> str:
    return "kquant" if type_name in KQUANT_TYPES else "int8" if KEPT_TYPES.get(type_name) == 8 else "int4"


def describe_plan(tensors: Mapping[str, StoredTensor], scheme: str, tied: bool) -> dict[str, dict]:
    """What the rule does with each packed weight, for the manifest: {module: {"bits", "from", "kept", "layout"}}
    ("from" is the file's type, kept as it is where "kept"; "layout" the packed form: int8, int4 or kquant)."""
    described = {}
    for name in quantized_weights(tensors, tied, scheme):
        source = stored_type(tensors, name)
        bits = kept_bits(source)
        kept = bits is not None
        described[name.removesuffix(".weight")] = {
            "bits": bits if kept else SCHEME_BITS[scheme], "from": source, "kept": kept,
            "layout": layout_of(source) if kept else "int8" if SCHEME_BITS[scheme] == 8 else "int4"}
    return described


def pack_stored(stored: StoredTensor, scheme: str) -> PackedWeight | KPackedWeight:
    """One weight packed: its own blocks where their type is kept, else our RTN of its values."""
    if isinstance(stored, QuantizedBlocks):
        if stored.type_name in KEPT_TYPES:
            return pack_gguf_blocks(stored)
        if stored.type_name in KQUANT_TYPES:
            return pack_kquant_blocks(stored)
        stored = stored.dequantize()
    return QUANTIZERS[SCHEME_BITS[scheme]](stored)


def quantized_state(tensors: Mapping[str, StoredTensor], scheme: str, tied: bool) -> dict[str, torch.Tensor]:
    """The state dict of the quantized model: packed weights (one tensor decoded at a time, so no float copy
    of the model is ever made) and the other tensors as floats."""
    packed_names = set(quantized_weights(tensors, tied, scheme))
    state: dict[str, torch.Tensor] = {}
    for name in tensors:
        stored = tensors[name]
        if name in packed_names:
            state.update(packed_state(name.removesuffix(".weight"), pack_stored(stored, scheme)))
        elif not (tied and name.startswith(LM_HEAD + ".")):
            state[name] = stored.dequantize() if isinstance(stored, QuantizedBlocks) else stored
    return state
