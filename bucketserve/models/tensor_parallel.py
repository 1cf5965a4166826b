"""Tensor parallelism as a transform over a built model (the model code has no TP branches).

Megatron-style: q/k/v and gate/up are split by output (each rank keeps whole heads, a slice of the MLP),
o_proj and down_proj by input, followed by an all-reduce that sums the ranks' partial outputs. The
embedding and lm_head stay replicated: vocab-parallel would need one more collective per graph (an
all-gather of the logits) and on CPU the saved memory is small next to the extra traffic; every rank then
holds the full logits, and rank 0's are the ones used.

KV heads: split when their number divides by the rank count; when ranks outnumber them (and are a
multiple of them), each KV head is replicated on the ranks whose query heads use it.
"""
from __future__ import annotations

import functools
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from .config import ModelConfig
from .llama import PagedCausalLM
from .projections import EAGER, GraphForm


class ShardableLinear(Protocol):
    """What a projection offers this transform: the float Linear (llama.py) and the quantized one
    (quantization/modules.py) alike, so sharding needs no type checks."""

    bias: torch.Tensor | None

    def multiply(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor: ...  # x @ weight.T, no bias
    def take_rows(self, start: int, stop: int) -> None: ...  # keep output rows [start, stop)
    def take_inputs(self, start: int, stop: int) -> None: ...  # keep inputs [start, stop) of every row


def check_shardable(config: ModelConfig, world_size: int, quantization_group: int | None = None) -> None:
    """Raise ValueError, naming the numbers, unless `config` splits evenly over `world_size` ranks (and, for
    quantized weights, o_proj's and down_proj's inputs split at whole groups of quantization_group inputs)."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % world_size:
        raise ValueError(
            f"num_attention_heads {heads} does not divide by tensor_parallel_size {world_size}; "
            f"choose a tensor_parallel_size that divides {heads}"
        )
    if kv_heads % world_size and world_size % kv_heads:
        raise ValueError(
            f"num_key_value_heads {kv_heads} and tensor_parallel_size {world_size}: one must divide the other "
            f"(split KV heads, or replicate them over ranks)"
        )
    if config.intermediate_size % world_size:
        raise ValueError(
            f"intermediate_size {config.intermediate_size} does not divide by tensor_parallel_size {world_size}"
        )
    if quantization_group is not None and world_size > 1:
        for what, size in (("o_proj", heads // world_size * config.head_dim),
                           ("down_proj", config.intermediate_size // world_size)):
            if size % quantization_group:
                raise ValueError(
                    f"a rank's slice of {what}'s inputs ({size}) is not a multiple of the quantization group "
                    f"({quantization_group}), so its scales cannot be split; choose another tensor_parallel_size, "
                    "or no quantization"
                )


def kv_heads_per_rank(config: ModelConfig, world_size: int) -> int:
    return max(1, config.num_key_value_heads // world_size)


class AllReduced:
    """Put in front of a projection's class: its product over this rank's inputs is summed over the ranks, then
    its bias added once."""

    def forward(self: ShardableLinear, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        from torch.distributed import _functional_collectives as funcol

        out = funcol.all_reduce(self.multiply(x, form), "sum", dist.group.WORLD)
        return out if self.bias is None else out + self.bias


@functools.cache
def _all_reduced(cls: type) -> type:
    return type(f"AllReduce{cls.__name__}", (AllReduced, cls), {})


def _split_by_input(linear: nn.Module, start: int, stop: int) -> nn.Module:
    """Keep inputs [start, stop) and all-reduce the output. The layer changes class in place rather than being
    wrapped, so its parameters keep their names (`o_proj.weight`, `o_proj.qweight`) in the rank's files."""
    linear.take_inputs(start, stop)
    linear.__class__ = _all_reduced(type(linear))
    return linear


def shard_model(model: PagedCausalLM, rank: int, world_size: int) -> PagedCausalLM:
    """Turn a full model into rank `rank`'s shard of `world_size`, in place. Works on `meta` tensors too."""
    config = model.config
    check_shardable(config, world_size)
    head_dim = config.head_dim
    heads = config.num_attention_heads // world_size
    kv_heads = kv_heads_per_rank(config, world_size)
    # With replicated KV heads, ranks_per_kv_head consecutive ranks share one.
    first_kv_head = rank * kv_heads if config.num_key_value_heads >= world_size else rank // (world_size // config.num_key_value_heads)
    mlp = config.intermediate_size // world_size
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_proj.take_rows(rank * heads * head_dim, (rank + 1) * heads * head_dim)
        attn.k_proj.take_rows(first_kv_head * head_dim, (first_kv_head + kv_heads) * head_dim)
        attn.v_proj.take_rows(first_kv_head * head_dim, (first_kv_head + kv_heads) * head_dim)
        attn.o_proj = _split_by_input(attn.o_proj, rank * heads * head_dim, (rank + 1) * heads * head_dim)
        attn.num_heads, attn.num_kv_heads = heads, kv_heads
        layer.mlp.gate_proj.take_rows(rank * mlp, (rank + 1) * mlp)
        layer.mlp.up_proj.take_rows(rank * mlp, (rank + 1) * mlp)
        layer.mlp.down_proj = _split_by_input(layer.mlp.down_proj, rank * mlp, (rank + 1) * mlp)
    return model
