"""quantize_model: the plain model's projections and embedding swapped for their quantized forms (as gpt-fast's
quantize.py does), after the model is built and before weights are assigned. The model code has no flag for it.

A plan says which modules are quantized and in how many bits: {module name: 8 or 4, or a KForm for a weight
kept from K-quant / Q5_0 / Q5_1 blocks (kquant_modules.py)}. Every projection (q/k/v/o, gate/up/down), the
lm_head and the embedding may be in it (quantization="auto" leaves a file's float ones out); norms stay float. A tied lm_head is not in the plan: it
shares the embedding's packed tensors, so the embedding's bits are its bits.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .kquant_layout import HIGH_BITS_PER_BYTE, KPackedWeight, empty_kpacked
from .kquant_modules import KForm, KQuantEmbedding, KQuantLinear
from .layout import PackedWeight
from .modules import QuantizedEmbedding, QuantizedLinear, empty_packed

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
EMBEDDING = "model.embed_tokens"
LM_HEAD = "lm_head"
QWEIGHT = "qweight"


def is_quantized_module(name: str) -> bool:
    """Whether a module of the Llama family (by its name in the model) is one quantization swaps."""
    return name in (EMBEDDING, LM_HEAD) or name.rpartition(".")[2] in PROJECTIONS


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(module, QuantizedLinear) for module in model.modules())


def plan_of_state(state: Mapping[str, torch.Tensor]) -> dict[str, int | KForm]:
    """The plan a state dict was saved with: every `<module>.qweight`, int8 -> 8 bits, uint8 -> 4, or with
    float32 scales a kept K weight (its bits from `.qhigh`'s width, its group from the scales')."""
    plan: dict[str, int | KForm] = {}
    for name, tensor in state.items():
        if not name.endswith("." + QWEIGHT):
            continue
        module = name.removesuffix("." + QWEIGHT)
        if state[f"{module}.scales"].dtype != torch.float32:
            plan[module] = 8 if tensor.dtype == torch.int8 else 4
            continue
        k = tensor.shape[1] * 2
        high = state.get(f"{module}.qhigh")
        bits = 4 if high is None else next(b for b, per_byte in HIGH_BITS_PER_BYTE.items() if high.shape[1] * per_byte == k)
        plan[module] = KForm(bits, k // state[f"{module}.scales"].shape[1])
    return plan


def quantize_model(model: nn.Module, plan: Mapping[str, int | KForm], dtype: torch.dtype,
                   activations: str | None = None) -> nn.Module:
    """Swap, in place, each module named in plan for its quantized form with uninitialised tensors on the
    module's device (build the model on `meta`, then assign the packed tensors by name). dtype: the model's
    float dtype, which the embedding's rows are dequantized to. activations: "int8" to quantize every
    projection's input at run time (quantization/activations.py), None to keep it float."""
    unknown = sorted(name for name in plan if not is_quantized_module(name))
    if unknown:
        raise ValueError(f"quantize_model swaps the projections, the lm_head and the embedding; not {unknown[:5]}")
    modules = dict(model.named_modules())
    for name, bits in plan.items():
        old = modules[name]
        n, k = old.weight.shape
        if isinstance(bits, KForm):
            packed = empty_kpacked(n, k, bits.bits, bits.group, old.weight.device)
            new = KQuantEmbedding(packed, dtype) if isinstance(old, nn.Embedding) else KQuantLinear(packed, old.bias)
        elif isinstance(old, nn.Embedding):
            new = QuantizedEmbedding(empty_packed(n, k, bits, old.weight.device), dtype)
        else:
            new = QuantizedLinear(empty_packed(n, k, bits, old.weight.device), old.bias, activations)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    if model.config.tie_word_embeddings and EMBEDDING in plan:
        embedding = model.get_submodule(EMBEDDING)
        if isinstance(embedding, KQuantEmbedding):
            model.lm_head = KQuantLinear(embedding.packed)
        else:
            model.lm_head = QuantizedLinear(embedding.packed, activations=activations)
        model.tie_weights()  # one set of packed tensors for both
    return model


def packed_state(name: str, packed: PackedWeight | KPackedWeight) -> dict[str, torch.Tensor]:
    """The state dict entries of one packed module, as model.safetensors stores them."""
    entries = {f"{name}.{QWEIGHT}": packed.qweight, f"{name}.scales": packed.scales}
    if isinstance(packed, KPackedWeight) and packed.qhigh is not None:
        entries[f"{name}.qhigh"] = packed.qhigh
    if packed.mins is not None:
        entries[f"{name}.mins"] = packed.mins
    return entries
