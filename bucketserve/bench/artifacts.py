"""The benchmark's model files: the random checkpoint and its compiled directories, cached between runs.

Each compiled directory is keyed by the options that shape it and by the source of the code that writes
its graphs (models/, compiler/), so a change to the model code recompiles instead of timing stale graphs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import AutoModelForCausalLM
from ..demo.checkpoint import build_random_checkpoint
from .options import BenchOptions


@dataclass
class CompiledSystem:
    name: str  # "[8, 4, 1]", "[8]" or "eager"
    directory: Path
    compile_seconds: dict[str, float]  # per graph, from the manifest (when the directory was compiled)
    load_seconds: float  # this run's from_pretrained(directory)
    model: object  # the loaded BucketModelForCausalLM


def system_name(decoder_batch_sizes) -> str:
    return "[" + ", ".join(str(b) for b in decoder_batch_sizes) + "]"


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_dir(options: BenchOptions) -> Path:
    """The random-weight checkpoint of options.shape, built once per (shape, seed)."""
    directory = options.cache_dir / f"checkpoint-{options.shape}-{_key({'shape': options.shape, 'seed': options.seed})}"
    if not (directory / "model.safetensors").is_file():
        shutil.rmtree(directory, ignore_errors=True)
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        build_random_checkpoint(partial, shape=options.shape, seed=options.seed)
        partial.rename(directory)
    return directory


def compile_options(options: BenchOptions, decoder_batch_sizes, compiler: str = "aoti", tensor_parallel_size: int = 1) -> dict:
    values = dict(batch_size=options.batch_size, max_seq_len=options.max_seq_len, dtype=options.dtype,
                  decoder_batch_sizes=list(decoder_batch_sizes), prefill_chunk_size=options.prefill_chunk_size,
                  compiler=compiler)
    if tensor_parallel_size > 1:  # only then: single-process options, and so their cache keys, stay as they were
        values["tensor_parallel_size"] = tensor_parallel_size
    return values


def compiled_dir(options: BenchOptions, decoder_batch_sizes, source: str, tensor_parallel_size: int = 1) -> Path:
    """The AOTInductor directory for these decoders (and ranks), compiled once per options and model source digest."""
    compile_kwargs = compile_options(options, decoder_batch_sizes, tensor_parallel_size=tensor_parallel_size)
    parts = {**compile_kwargs, "shape": options.shape, "seed": options.seed, "torch": torch.__version__, "source": source}
    sizes = "-".join(str(b) for b in decoder_batch_sizes)
    ranks = f"-tp{tensor_parallel_size}" if tensor_parallel_size > 1 else ""
    directory = options.cache_dir / f"compiled-{options.shape}-{sizes}{ranks}-{_key(parts)}"
    if options.recompile:
        shutil.rmtree(directory, ignore_errors=True)
    if not (directory / "bucketserve_manifest.json").is_file():
        checkpoint = checkpoint_dir(options)
        print(f"compiling {options.shape} with decoders {list(decoder_batch_sizes)}"
              f"{f' on {tensor_parallel_size} ranks' if ranks else ''} (cached in {directory}) ...", flush=True)
        threads, model = torch.get_num_threads(), None
        partial = directory.with_name(directory.name + ".partial")
        try:
            model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, **compile_kwargs)
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial)
        finally:
            # A tensor-parallel export also loads the model: worker processes, this process's one process group
            # (which would block loading it again later) and its threads split among the ranks. Undo all three,
            # failed or not.
            if model is not None:
                model.close()
            torch.set_num_threads(threads)
        del model
        partial.rename(directory)
    return directory


def load_compiled(name: str, directory: Path) -> CompiledSystem:
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory)
    load_seconds = time.perf_counter() - started
    return CompiledSystem(name, directory, dict(model.manifest["compile_seconds"]), load_seconds, model)


def load_eager(options: BenchOptions, decoder_batch_sizes) -> CompiledSystem:
    """The same model code run uncompiled (compiler="eager"): nothing to cache, building is the load."""
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint_dir(options), export=True, **compile_options(options, decoder_batch_sizes, compiler="eager"))
    return CompiledSystem("eager", model.directory, {}, time.perf_counter() - started, model)
