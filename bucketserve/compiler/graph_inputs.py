"""What each compiled graph takes, recorded beside it (graphs/<graph>.inputs.json) and checked at load.

A graph is compiled for fixed shapes: a KV cache of other blocks, dtype or size, another batch size or block
table length, would be read and written out of bounds inside native code (heap corruption, a hang, or other
tokens). Loading builds the inputs the manifest's options make (graph_specs' own builders) and compares them
with what the graph was compiled for, before the graph runs.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import CompileConfig
from .graph_specs import DECODER_INPUTS, PREFILL, PREFILL_INPUTS, decoder_inputs, decoder_name, prefill_inputs
from .manifest import CompiledModelError

# Which compile options fix each input's shape or dtype (for the message).
FIXED_BY = {
    "input_ids": "batch_size / decoder_batch_sizes / prefill_chunk_size",
    "positions": "batch_size / decoder_batch_sizes / prefill_chunk_size",
    "slot_mapping": "batch_size / decoder_batch_sizes / prefill_chunk_size",
    "block_tables": "max_seq_len / kvcache_block_size",
    "context_positions": "max_seq_len",
    "last_index": "batch_size",
    "kv_cache": "kvcache_num_blocks / kvcache_block_size / kv_cache_dtype / device",
    "weights": "dtype",
}


def inputs_path(package_path: Path) -> Path:
    return package_path.with_suffix(".inputs.json")


def describe(names: tuple[str, ...], inputs: tuple, weights_dtype: torch.dtype) -> dict[str, dict]:
    """{input name: {"shape": [...], "dtype": "float32", "device": "cpu"}}, free dimensions at their largest,
    and "weights": the dtype of the float weights the graph was compiled against (load_constants shares them)."""
    described = {name: {"shape": list(t.shape), "dtype": _name(t.dtype), "device": t.device.type}
                 for name, t in zip(names, inputs, strict=True)}
    return {**described, "weights": {"dtype": _name(weights_dtype)}}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def write_inputs(package_path: Path, names: tuple[str, ...], inputs: tuple, weights_dtype: torch.dtype) -> None:
    inputs_path(package_path).write_text(json.dumps(describe(names, inputs, weights_dtype), indent=1))


def expected_inputs(compile_config: CompileConfig, kv_cache: torch.Tensor,
                    weights_dtype: torch.dtype) -> dict[str, dict[str, dict]]:
    """{graph name: its inputs described} as the options make them, for every graph they name."""
    graphs = {PREFILL: describe(PREFILL_INPUTS, prefill_inputs(compile_config, kv_cache), weights_dtype)}
    for b in compile_config.decoder_batch_sizes:
        graphs[decoder_name(b)] = describe(DECODER_INPUTS, decoder_inputs(compile_config, kv_cache, b), weights_dtype)
    return graphs


def check_graph_inputs(graphs_dir: Path, compile_config: CompileConfig, kv_cache: torch.Tensor,
                       weights_dtype: torch.dtype) -> None:
    """Raise CompiledModelError naming the graph's file and the first input whose shape or dtype differs from what the
    options make (the options came from a manifest that does not fit its graphs)."""
    for graph, wanted in expected_inputs(compile_config, kv_cache, weights_dtype).items():
        package = graphs_dir / f"{graph}.pt2"
        recorded_path = inputs_path(package)
        if not package.is_file() or not recorded_path.is_file():
            missing = package if not package.is_file() else recorded_path
            raise CompiledModelError(f"{missing} is missing, but the manifest's options need graph {graph}")
        try:
            recorded = json.loads(recorded_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CompiledModelError(f"{recorded_path} is not valid JSON ({err})") from err
        if not isinstance(recorded, dict):
            raise CompiledModelError(f"{recorded_path} holds a JSON {type(recorded).__name__}, not the graph's inputs")
        for name, spec in wanted.items():
            if recorded.get(name) != spec:
                raise CompiledModelError(
                    f"{package} was compiled for input {name} {recorded.get(name)}, but the manifest's options "
                    f"({FIXED_BY[name]}) make it {spec}; recompile the model"
                )
