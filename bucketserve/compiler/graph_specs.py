"""The graphs a compiled directory holds, with the example inputs that fix their shapes.

The runtime builds its inputs with the same dtypes and shapes; this file is the contract between them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import CompileConfig
from ..models.llama import DecoderGraph, LlamaForCausalLM, PrefillGraph

PREFILL = "prefill"


def decoder_name(batch_size: int) -> str:
    return f"decoder_batch_{batch_size}"


def graph_names(compile_config: CompileConfig) -> list[str]:
    return [PREFILL] + [decoder_name(b) for b in compile_config.decoder_batch_sizes]


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    example_inputs: tuple


def graph_specs(model: LlamaForCausalLM, compile_config: CompileConfig, kv_cache: torch.Tensor) -> list[GraphSpec]:
    device = kv_cache.device
    chunk = compile_config.prefill_chunk_size
    blocks = compile_config.blocks_per_sequence

    def ids(*shape):
        return torch.zeros(shape, dtype=torch.long, device=device)

    specs = [GraphSpec(PREFILL, PrefillGraph(model), (ids(1, chunk), ids(1, chunk), ids(1, chunk), ids(1, blocks), ids(1), kv_cache))]
    for b in compile_config.decoder_batch_sizes:
        specs.append(GraphSpec(decoder_name(b), DecoderGraph(model), (ids(b), ids(b), ids(b), ids(b, blocks), kv_cache)))
    return specs


def graph_constants(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name inside a graph wrapper: the map AOTInductor loads constants from."""
    constants = dict(module.named_parameters(remove_duplicate=False))
    constants.update(module.named_buffers(remove_duplicate=False))
    return constants
