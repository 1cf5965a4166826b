"""How GGUF names the tensors of a Llama-family model, and the row order llama.cpp gives q and k.

Names come from gguf-py's own table (TensorNameMap), the one llama.cpp's converter writes with.
"""
from __future__ import annotations

import torch

LAYER_PARAMETERS = (
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.bias",
    "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
)


def hf_parameter_names(num_layers: int) -> list[str]:
    """Every parameter name a Llama-family model may have (biases and q/k norms where the family has them)."""
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    names += [f"model.layers.{i}.{p}" for i in range(num_layers) for p in LAYER_PARAMETERS]
    return names


def gguf_to_hf_names(architecture: str, num_layers: int) -> dict[str, str]:
    """{GGUF tensor name: Hugging Face parameter name} for one architecture ("llama", "qwen2", "qwen3")."""
    import gguf

    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    table = gguf.get_tensor_name_map(arch, num_layers)
    mapping = {}
    for hf_name in hf_parameter_names(num_layers):
        gguf_name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))  # the suffix kept
        if gguf_name is not None:
            mapping[gguf_name] = hf_name
    return mapping


def rotary_row_order(rows: int, heads: int) -> torch.Tensor:
    """For llama's q/k: hf_rows = gguf_rows[order]. llama.cpp's converter interleaves each head's two halves
    (row i of the first half and row i of the second become rows 2i and 2i+1); this undoes it."""
    return torch.arange(rows).view(heads, rows // heads // 2, 2).transpose(1, 2).reshape(-1)


def gguf_row_order(rows: int, heads: int) -> torch.Tensor:
    """The converter's own permutation (gguf_rows = hf_rows[order]): the inverse of rotary_row_order."""
    return torch.arange(rows).view(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)
