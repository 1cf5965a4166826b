"""The graphs a compiled directory holds, with the example inputs that fix their shapes.

The runtime builds its inputs with the same dtypes and shapes; this file is the contract between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import CompileConfig
from ..models.llama import DecoderGraph, LlamaForCausalLM, PrefillGraph
from .packed_weights import GEMM_TEMPLATE_CONFIGS, uses_gemm_template

PREFILL = "prefill"
# A prefill chunk runs its real tokens rounded up to a multiple of this many (whole vectors, few shapes).
PREFILL_GRANULE = 16
# Graphs read context in multiples of this many positions.
CONTEXT_GRANULE = 64


def decoder_name(batch_size: int) -> str:
    return f"decoder_batch_{batch_size}"


def prefill_width(real_tokens: int, chunk_size: int) -> int:
    """Tokens a prefill call runs for a chunk of real_tokens: rounded up to PREFILL_GRANULE, at most chunk_size."""
    return min(-(-real_tokens // PREFILL_GRANULE) * PREFILL_GRANULE, chunk_size)


def context_len_through(last_position: int, max_seq_len: int) -> int:
    """Context positions a call reads when its furthest token sits at last_position: rounded up to
    CONTEXT_GRANULE (whole vectors for the compiled loops), at most max_seq_len."""
    return min((last_position // CONTEXT_GRANULE + 1) * CONTEXT_GRANULE, max_seq_len)


def graph_names(compile_config: CompileConfig) -> list[str]:
    return [PREFILL] + [decoder_name(b) for b in compile_config.decoder_batch_sizes]


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    example_inputs: tuple
    dynamic_shapes: tuple | None = None  # torch.export's, one entry per input; None: every shape fixed
    inductor_configs: dict = field(default_factory=dict)  # on top of aoti.INDUCTOR_CONFIGS


def graph_specs(model: LlamaForCausalLM, compile_config: CompileConfig, kv_cache: torch.Tensor) -> list[GraphSpec]:
    device = kv_cache.device
    chunk = compile_config.prefill_chunk_size
    blocks = compile_config.blocks_per_sequence

    def ids(*shape):
        return torch.zeros(shape, dtype=torch.long, device=device)

    # Every graph reads context_positions = 0..context_len-1 of each row, context_len chosen per call (the
    # runtime's context_len_through): a free dimension of the export.
    context_len = torch.export.Dim("context_len", min=1, max=compile_config.max_seq_len)
    context_positions = torch.arange(compile_config.max_seq_len, device=device)
    # The prefill chunk's length is free too, from PREFILL_GRANULE tokens up (the runtime rounds a chunk's
    # real tokens up to it); a chunk size that small leaves nothing to vary, and the shape fixed.
    token_dims = {1: torch.export.Dim("chunk_len", min=PREFILL_GRANULE, max=chunk)} if chunk > PREFILL_GRANULE else None
    prefill_inputs = (ids(1, chunk), ids(1, chunk), ids(1, chunk), ids(1, blocks), context_positions, ids(1), kv_cache)
    prefill_dynamic = (token_dims, token_dims, token_dims, None, {0: context_len}, None, None)
    specs = [GraphSpec(PREFILL, PrefillGraph(model), prefill_inputs, prefill_dynamic)]
    # A decoder's other inputs have their shapes fixed by its batch size. Its projections are GEMMs of a few
    # rows, which on the CPU Inductor's C++ GEMM template runs fastest (packed_weights).
    template = GEMM_TEMPLATE_CONFIGS if uses_gemm_template(device, model.lm_head.weight.dtype) else {}
    for b in compile_config.decoder_batch_sizes:
        inputs = (ids(b), ids(b), ids(b), ids(b, blocks), context_positions, kv_cache)
        dynamic = (None, None, None, None, {0: context_len}, None)
        specs.append(GraphSpec(decoder_name(b), DecoderGraph(model, fused_decode=True), inputs, dynamic, template))
    return specs


def graph_constants(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name inside a graph wrapper: the map AOTInductor loads constants from."""
    constants = dict(module.named_parameters(remove_duplicate=False))
    constants.update(module.named_buffers(remove_duplicate=False))
    return constants
