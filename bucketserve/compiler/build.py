"""Compiling a checkpoint into a self-contained directory: graphs, weights once, manifest, config, tokenizer."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..checkpoints.base import Checkpoint
from ..checkpoints.safetensors_checkpoint import SINGLE_FILE
from ..config import CompileConfig
from ..kernels import library
from ..models.llama import PagedCausalLM
from ..quantization.checkpoint_state import describe_plan
from ..quantization.transform import is_quantized
from . import aoti
from .directory_layout import GRAPHS_DIR, rank_dir
from .graph_inputs import write_inputs
from .graph_specs import (
    DECODER_INPUTS,
    PREFILL,
    PREFILL_INPUTS,
    GraphSpec,
    cache_shape,
    decoder_specs,
    graph_constants,
    prefill_spec,
)
from .manifest import write_manifest
from .packed_weights import block_sizes_by_shape

logger = logging.getLogger(__name__)

def build_compiled_directory(
    checkpoint: Checkpoint, out_dir: Path, model: PagedCausalLM, compile_config: CompileConfig
) -> None:
    """The whole directory for tensor_parallel_size 1: shared files, weights, graphs, manifest."""
    compile_seconds = write_rank_files(checkpoint, out_dir, model, compile_config, rank=0, world_size=1)
    write_manifest(out_dir, compile_config.to_dict(), model.config.to_dict(), compile_seconds, checkpoint.describe(),
                   quantized_tensors(checkpoint, compile_config, model.config.tie_word_embeddings))


def quantized_tensors(checkpoint: Checkpoint, compile_config: CompileConfig, tied: bool) -> dict | None:
    """For the manifest: what quantization did with each weight (kept the file's blocks, or quantized them)."""
    if compile_config.quantization is None:
        return None
    return describe_plan(checkpoint.tensors, compile_config.quantization, tied)


def write_rank_files(
    checkpoint: Checkpoint, out_dir: Path, model: PagedCausalLM, compile_config: CompileConfig, rank: int,
    world_size: int, compile_graphs: bool = True,
) -> dict[str, float]:
    """One rank's weights and (unless compile_graphs is False) graphs; rank 0 also writes the shared files.
    Returns seconds per graph."""
    target = rank_dir(out_dir, rank, world_size)
    target.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        checkpoint.write_support_files(out_dir)
        if not (out_dir / "generation_config.json").is_file():
            _write_generation_config(out_dir)
    save_file(weights_to_save(model), str(target / SINGLE_FILE), metadata={"format": "pt"})

    compile_seconds: dict[str, float] = {}
    if compile_config.compiler != "aoti" or not compile_graphs:
        return compile_seconds
    (target / GRAPHS_DIR).mkdir(exist_ok=True)
    # A cache to trace against; graphs take the runtime's own cache as an input later.
    kv_cache = torch.zeros(cache_shape(model, compile_config), dtype=compile_config.kv_cache_torch_dtype,
                           device=model.model.norm.weight.device)
    decoders = decoder_specs(model, compile_config, kv_cache)
    prefix = "" if world_size == 1 else f"rank{rank}/"
    with tqdm(total=len(decoders) + 1, desc="compiling graphs", unit="graph", disable=rank != 0) as bar:

        def compile_one(spec: GraphSpec) -> Path:
            bar.set_postfix_str(spec.name)
            package = target / GRAPHS_DIR / f"{spec.name}.pt2"
            started = time.perf_counter()
            aoti.compile_graph(spec, package)
            write_inputs(package, PREFILL_INPUTS if spec.name == PREFILL else DECODER_INPUTS, spec.example_inputs,
                         model.model.norm.weight.dtype)
            compile_seconds[prefix + spec.name] = round(time.perf_counter() - started, 2)
            logger.info("compiled %s%s in %.1f s", prefix, spec.name, compile_seconds[prefix + spec.name])
            bar.update()
            return package

        # Decoders first: the prefill reads each weight in the blocked layout the decoders' GEMM chose.
        described = [aoti.read_packed(compile_one(spec)) for spec in decoders]
        if any(spec.module.form.attention_kernel for spec in decoders) or calls_quantized_kernel(model, kv_cache):
            library.copy_into(target / GRAPHS_DIR)  # the graphs call it: the directory carries it
        block_sizes = block_sizes_by_shape(described, graph_constants(decoders[0].module))
        compile_one(prefill_spec(model, compile_config, kv_cache, block_sizes))
    return compile_seconds


def weights_to_save(model: PagedCausalLM) -> dict[str, torch.Tensor]:
    """The state dict with a tied lm_head stored once (as HF does), contiguous for safetensors."""
    state = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    return state


def calls_quantized_kernel(model: PagedCausalLM, kv_cache) -> bool:
    """Whether the graphs of a quantized model were traced through torch.ops.bucketserve.quantized_linear
    (quantization.quantized_gemm.quantized_linear: fp32 on the CPU, where this process has the op)."""
    return (is_quantized(model) and kv_cache.device.type == "cpu" and model.model.norm.weight.dtype == torch.float32
            and "quantized_linear" in library.registered_ops())


def _write_generation_config(out_dir: Path) -> None:
    hf = json.loads((out_dir / "config.json").read_text())
    generation = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
