"""A GGUF file's metadata checked against the tensors it holds, before anything is built from it.

Every count is bounded by what is present (a block_count of 2^31 would otherwise build a name table of 2^31
layers), every divisor is checked before it divides, and every tensor's shape is held to the config the
metadata makes. Each fault is a CheckpointError naming the file, the key and its value.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch

from ..models.config import ModelConfig
from .base import CheckpointError

LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
# GGML block types: bytes per block and where its float16 scales (d, and dmin / m) sit in it.
BLOCK_SCALES = {"Q8_0": (34, (0,)), "Q4_0": (18, (0,)), "Q4_1": (20, (0, 2)), "Q5_0": (22, (0,)),
                "Q5_1": (24, (0, 2)), "Q4_K": (144, (0, 2)), "Q5_K": (176, (0, 2)), "Q6_K": (210, (208,))}


def field_value(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def check_metadata(reader, architecture: str, path: Path) -> None:
    """The counts and sizes the model is built from, against the tensors present (no tensor is read)."""
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    layers = {int(m.group(1)) for name in tensors if (m := LAYER_TENSOR.match(name))}

    def count(suffix: str, default: Any = None, required: bool = True) -> int | None:
        key = f"{architecture}.{suffix}"
        value = field_value(reader, key, default)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CheckpointError(f"{path}: metadata {key} is {value!r}; it must be a whole number >= 1")
        return value

    key = f"{architecture}.block_count"
    block_count = count("block_count")
    if len(layers) != block_count or (layers and (min(layers), max(layers)) != (0, block_count - 1)):  # 0..count-1
        present = f"tensors for layers {min(layers)} to {max(layers)} ({len(layers)} in all)" if layers else "no layer tensors"
        raise CheckpointError(f"{path}: metadata {key} is {block_count}, but the file holds {present}; "
                              "the file is damaged or was converted wrongly")
    heads = count("attention.head_count")
    kv_heads = count("attention.head_count_kv", default=heads)
    if heads % kv_heads:
        raise CheckpointError(f"{path}: metadata {architecture}.attention.head_count_kv is {kv_heads}, which does not "
                              f"divide {architecture}.attention.head_count {heads}")
    hidden = count("embedding_length")
    head_dim = count("attention.key_length", required=False)
    if head_dim is None and hidden % heads:
        raise CheckpointError(f"{path}: metadata {architecture}.attention.head_count is {heads}, which does not divide "
                              f"{architecture}.embedding_length {hidden}")
    count("feed_forward_length")
    count("context_length")
    embedding = tensors.get("token_embd.weight")
    if embedding is not None and int(embedding.shape[0]) != hidden:  # GGUF's shape is innermost first
        raise CheckpointError(f"{path}: metadata {architecture}.embedding_length is {hidden}, but token_embd.weight "
                              f"holds rows of {int(embedding.shape[0])}")
    for suffix in ("rope.freq_base", "attention.layer_norm_rms_epsilon"):
        key = f"{architecture}.{suffix}"
        value = field_value(reader, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise CheckpointError(f"{path}: metadata {key} is {value!r}; it must be a finite number > 0")


def model_config_of(hf_config: dict[str, Any], path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_hf_dict(hf_config)
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as err:
        raise CheckpointError(f"{path}: its metadata makes no model bucketserve runs ({type(err).__name__}: {err})") from err


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Llama-family parameter's shape under `config` (those a family lacks are simply never looked up)."""
    hidden, q_rows, kv_rows = config.hidden_size, config.num_attention_heads * config.head_dim, \
        config.num_key_value_heads * config.head_dim
    shapes = {"model.embed_tokens.weight": (config.vocab_size, hidden), "lm_head.weight": (config.vocab_size, hidden),
              "model.norm.weight": (hidden,)}
    per_layer = {
        "input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (q_rows, hidden), "self_attn.k_proj.weight": (kv_rows, hidden),
        "self_attn.v_proj.weight": (kv_rows, hidden), "self_attn.o_proj.weight": (hidden, q_rows),
        "self_attn.q_proj.bias": (q_rows,), "self_attn.k_proj.bias": (kv_rows,), "self_attn.v_proj.bias": (kv_rows,),
        "self_attn.o_proj.bias": (hidden,), "self_attn.q_norm.weight": (config.head_dim,),
        "self_attn.k_norm.weight": (config.head_dim,),
        "mlp.gate_proj.weight": (config.intermediate_size, hidden), "mlp.up_proj.weight": (config.intermediate_size, hidden),
        "mlp.down_proj.weight": (hidden, config.intermediate_size),
    }
    for layer in range(config.num_hidden_layers):
        shapes.update({f"model.layers.{layer}.{name}": shape for name, shape in per_layer.items()})
    return shapes


def check_shape(path: Path, gguf_name: str, hf_name: str, shape: tuple[int, ...], expected: dict) -> None:
    if hf_name in expected and tuple(shape) != expected[hf_name]:
        raise CheckpointError(f"{path}: tensor {gguf_name} has shape {list(shape)}, but the metadata makes "
                              f"{hf_name} {list(expected[hf_name])}; the file is damaged or was converted wrongly")


def check_finite(path: Path, gguf_name: str, type_name: str, data: torch.Tensor) -> None:
    """data: a float tensor, or the uint8 blocks of a quantized one (whose float16 scales are checked)."""
    if data.dtype != torch.uint8:
        values = data
    elif type_name in BLOCK_SCALES:
        block_bytes, offsets = BLOCK_SCALES[type_name]
        blocks = data.reshape(-1, block_bytes)
        values = torch.stack([blocks[:, o:o + 2].contiguous().view(torch.float16).reshape(-1) for o in offsets])
    else:
        return
    if not torch.isfinite(values).all():
        what = "values" if data.dtype != torch.uint8 else f"{type_name} block scales"
        raise CheckpointError(f"{path}: tensor {gguf_name} holds NaN or Inf {what}; the file is damaged: "
                              "re-download or re-convert it")
