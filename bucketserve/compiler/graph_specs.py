"""The graphs a compiled directory holds, with the example inputs that fix their shapes.

The runtime builds its inputs with the same dtypes and shapes; this file is the contract between them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import CompileConfig
from ..kernels import library
from ..models.llama import DecoderGraph, PagedCausalLM, PrefillGraph
from ..models.projections import COMPILED_CPU_DECODE, COMPILED_DECODE, GraphForm, kernel_decode_form
from ..quantization.transform import is_quantized
from .packed_weights import FOLD_CONFIGS, GEMM_TEMPLATE_CONFIGS, uses_blocked_gemm

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


@dataclass
class GraphSpec:
    name: str
    module: nn.Module
    example_inputs: tuple
    dynamic_shapes: tuple | None = None  # torch.export's, one entry per input; None: every shape fixed
    inductor_configs: dict = field(default_factory=dict)  # on top of aoti.INDUCTOR_CONFIGS


def cache_shape(model: PagedCausalLM, compile_config: CompileConfig) -> tuple[int, ...]:
    """[layers, 2 (k, v), slots, kv heads, head dim]; the KV heads are the model's own (a TP shard has fewer)."""
    num_slots = compile_config.kvcache_num_blocks * compile_config.kvcache_block_size
    attention = model.model.layers[0].self_attn
    return (len(model.model.layers), 2, num_slots, attention.num_kv_heads, attention.head_dim)


def _shared_inputs(compile_config: CompileConfig, kv_cache: torch.Tensor):
    """ids(*shape), the free context length and context_positions: what every graph's inputs are built from."""
    device = kv_cache.device

    def ids(*shape):
        return torch.zeros(shape, dtype=torch.long, device=device)

    # Every graph reads context_positions = 0..context_len-1 of each row, context_len chosen per call (the
    # runtime's context_len_through): a free dimension of the export.
    context_len = torch.export.Dim("context_len", min=1, max=compile_config.max_seq_len)
    return ids, context_len, torch.arange(compile_config.max_seq_len, device=device)


# The KV cache dtypes the attention kernel (kernels/paged_attention.cpp) reads, widening bf16 to fp32 as it loads.
ATTENTION_KERNEL_KV_DTYPES = (torch.float32, torch.bfloat16)


def attention_kernel_reads(kv_cache_dtype: torch.dtype) -> bool:
    return kv_cache_dtype in ATTENTION_KERNEL_KV_DTYPES


def decoder_specs(model: PagedCausalLM, compile_config: CompileConfig, kv_cache: torch.Tensor) -> list[GraphSpec]:
    """One graph per decoder batch size; their shapes are fixed by it, but for the context length.

    A decoder's projections are GEMMs of a few rows over weights reordered into blocks of rows
    (packed_weights). On the CPU in fp32 our kernels run them and the attention where they build for
    AVX-512; where only the attention kernel builds, Inductor's C++ GEMM template runs the projections."""
    _, context_len, _ = _shared_inputs(compile_config, kv_cache)
    cpu_fp32 = uses_blocked_gemm(kv_cache.device, model.model.norm.weight.dtype)
    # Built first (once per machine): a quantized model's projections call its quantized_linear where it exists.
    attention_kernel = cpu_fp32 and library.build() is not None and attention_kernel_reads(kv_cache.dtype)
    block_n = library.gemm_block_n() if cpu_fp32 else None
    if is_quantized(model):
        # Packed weights are read as they are (quantization/): nothing to reorder, so no freezing and no template.
        form, configs = GraphForm(decode_attention=True, attention_kernel=attention_kernel), {}
    elif block_n is not None:
        # Freezing folds each weight's reorder into a constant that load_graph rebuilds (packed_weights).
        form, configs = kernel_decode_form(block_n, attention_kernel), FOLD_CONFIGS
    elif cpu_fp32:
        form = COMPILED_CPU_DECODE if attention_kernel else COMPILED_DECODE
        configs = GEMM_TEMPLATE_CONFIGS
    else:
        form, configs = COMPILED_DECODE, {}
    specs = []
    for b in compile_config.decoder_batch_sizes:
        inputs = decoder_inputs(compile_config, kv_cache, b)
        dynamic = (None, None, None, None, {0: context_len}, None)
        specs.append(GraphSpec(decoder_name(b), DecoderGraph(model, form), inputs, dynamic, configs))
    return specs


# The graphs' inputs, in order (models/llama.py's DecoderGraph.forward and PrefillGraph.forward).
DECODER_INPUTS = ("input_ids", "positions", "slot_mapping", "block_tables", "context_positions", "kv_cache")
PREFILL_INPUTS = ("input_ids", "positions", "slot_mapping", "block_tables", "context_positions", "last_index", "kv_cache")


def decoder_inputs(compile_config: CompileConfig, kv_cache: torch.Tensor, batch_size: int) -> tuple:
    """decoder_batch_{batch_size}'s example inputs: its shapes, the context length at its largest."""
    ids, _, context_positions = _shared_inputs(compile_config, kv_cache)
    b, blocks = batch_size, compile_config.blocks_per_sequence
    return ids(b), ids(b), ids(b), ids(b, blocks), context_positions, kv_cache


def prefill_inputs(compile_config: CompileConfig, kv_cache: torch.Tensor) -> tuple:
    """The prefill's example inputs: batch_size rows of a whole chunk, the context length at its largest."""
    ids, _, context_positions = _shared_inputs(compile_config, kv_cache)
    chunk, rows = compile_config.prefill_chunk_size, compile_config.batch_size
    return (ids(rows, chunk), ids(rows, chunk), ids(rows, chunk), ids(rows, compile_config.blocks_per_sequence),
            context_positions, ids(rows), kv_cache)


def prefill_spec(
    model: PagedCausalLM, compile_config: CompileConfig, kv_cache: torch.Tensor, block_sizes: dict[tuple[int, int], int]
) -> GraphSpec:
    """The prefill graph, whose projections read every weight the decoders reordered in that same blocked
    layout (block_sizes, by weight shape: packed_weights.block_sizes_by_shape), so the model holds one copy."""
    _, context_len, _ = _shared_inputs(compile_config, kv_cache)
    chunk, rows = compile_config.prefill_chunk_size, compile_config.batch_size
    # The prefill chunk's length is free too, from PREFILL_GRANULE tokens up (the runtime rounds a chunk's
    # real tokens up to it); a chunk size that small leaves nothing to vary, and the shape fixed.
    chunk_len = torch.export.Dim("chunk_len", min=PREFILL_GRANULE, max=chunk) if chunk > PREFILL_GRANULE else None
    # So is the number of rows (prompts prefilled together), 1 to batch_size: one graph for every group.
    row_count = torch.export.Dim("rows", min=1, max=rows) if rows > 1 else None
    token_dims = {k: d for k, d in ((0, row_count), (1, chunk_len)) if d is not None} or None
    inputs = prefill_inputs(compile_config, kv_cache)
    row_dims = {0: row_count} if row_count is not None else None
    dynamic = (token_dims, token_dims, token_dims, row_dims, {0: context_len}, row_dims, None)
    # Freezing folds each weight's reorder (blocked_linear) into a constant load_graph rebuilds (packed_weights).
    configs = FOLD_CONFIGS if block_sizes else {}
    return GraphSpec(PREFILL, PrefillGraph(model, GraphForm(block_sizes=block_sizes)), inputs, dynamic, configs)


def graph_constants(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name inside a graph wrapper: the map AOTInductor loads constants from."""
    constants = dict(module.named_parameters(remove_duplicate=False))
    constants.update(module.named_buffers(remove_duplicate=False))
    return constants
