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
    dynamic_shapes: tuple | None = None  # torch.export's, one entry per input; None: every shape fixed


def graph_specs(model: LlamaForCausalLM, compile_config: CompileConfig, kv_cache: torch.Tensor) -> list[GraphSpec]:
    device = kv_cache.device
    chunk = compile_config.prefill_chunk_size
    blocks = compile_config.blocks_per_sequence

    def ids(*shape):
        return torch.zeros(shape, dtype=torch.long, device=device)

    specs = [GraphSpec(PREFILL, PrefillGraph(model), (ids(1, chunk), ids(1, chunk), ids(1, chunk), ids(1, blocks), ids(1), kv_cache))]
    # A decoder reads context_positions = 0..context_len-1 of each row, context_len chosen per step (the
    # runtime's decode_context_len); every other input has its shape fixed by the batch size.
    context_len = torch.export.Dim("context_len", min=1, max=compile_config.max_seq_len)
    context_positions = torch.arange(compile_config.max_seq_len, device=device)
    for b in compile_config.decoder_batch_sizes:
        inputs = (ids(b), ids(b), ids(b), ids(b, blocks), context_positions, kv_cache)
        dynamic = (None, None, None, None, {0: context_len}, None)
        specs.append(GraphSpec(decoder_name(b), DecoderGraph(model, fused_decode=True), inputs, dynamic))
    return specs


def graph_constants(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name inside a graph wrapper: the map AOTInductor loads constants from."""
    constants = dict(module.named_parameters(remove_duplicate=False))
    constants.update(module.named_buffers(remove_duplicate=False))
    return constants
