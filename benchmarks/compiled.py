"""The benchmark's model files, cached between runs under --cache-dir: a random checkpoint of a built-in shape,
a GGUF file's requantized copies (the same weights for llama.cpp and bucketserve at the same bits) and
bucketserve's compiled directories of either.

Each compiled directory is keyed by the options that shape it, by the identity of the file it compiles from and
by the digest of the code that writes graphs, so a change to either recompiles instead of timing stale graphs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def random_checkpoint(cache_dir: Path, shape: str, seed: int) -> Path:
    """The random-weight checkpoint of `shape` (a bucketserve.demo.checkpoint SHAPES name), built once per seed."""
    from bucketserve.demo.checkpoint import build_random_checkpoint

    directory = cache_dir / f"checkpoint-{shape}-{cache_key({'shape': shape, 'seed': seed})}"
    if not (directory / "model.safetensors").is_file():
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        build_random_checkpoint(partial, shape=shape, seed=seed)
        partial.rename(directory)
    return directory


def random_gguf(cache_dir: Path, shape: str, seed: int, weight_type: str) -> Path:
    """A random model of `shape` written as a GGUF file of weight_type (for llama.cpp, and a GGUF-source run)."""
    from bucketserve.checkpoints.gguf_writer import write_gguf

    folder = cache_dir / f"gguf-{shape}-{cache_key({'shape': shape, 'seed': seed, 'type': weight_type})}"
    path = folder / f"{shape}.{weight_type}.gguf"
    if not path.is_file():
        checkpoint = random_checkpoint(cache_dir, shape, seed)
        folder.mkdir(parents=True, exist_ok=True)
        write_gguf(checkpoint, path.with_suffix(".partial"), weight_type)
        path.with_suffix(".partial").rename(path)
    return path


def requantized_file(cache_dir: Path, source: Path, weight_type: str) -> Path:
    """`source` with every matrix re-encoded as weight_type (checkpoints.gguf_writer.requantize_gguf), made once."""
    from bucketserve.checkpoints.gguf_writer import requantize_gguf

    folder = cache_dir / f"real-files-{cache_key(file_identity(source))}"
    path = folder / f"{source.stem}.{weight_type}.gguf"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {path.name} (every matrix of {source.name} as {weight_type}) ...", flush=True)
        requantize_gguf(source, path.with_suffix(".partial"), weight_type)
        path.with_suffix(".partial").rename(path)
    return path


def compiled_dir(cache_dir: Path, label: str, source: Path, compile_kwargs: dict, identity: dict, code_digest: str,
                 recompile: bool = False) -> Path:
    """bucketserve's compiled directory of `source` (a checkpoint folder or a GGUF file) with compile_kwargs,
    compiled once per options, source identity and code digest. `label` only names the folder."""
    parts = {**compile_kwargs, **identity, "torch": torch.__version__, "source": code_digest}
    directory = cache_dir / f"compiled-{label}-{cache_key(parts)}"
    if recompile:
        shutil.rmtree(directory, ignore_errors=True)
    if not (directory / "bucketserve_manifest.json").is_file():
        from bucketserve import AutoModelForCausalLM

        print(f"compiling {label} from {source.name} (cached in {directory}) ...", flush=True)
        threads, model = torch.get_num_threads(), None
        partial = directory.with_name(directory.name + ".partial")
        try:
            model = AutoModelForCausalLM.from_pretrained(source, export=True, **compile_kwargs)
            shutil.rmtree(partial, ignore_errors=True)
            model.save_pretrained(partial)
        finally:
            # A tensor-parallel export also loads the model: worker processes, this process's process group and its
            # threads split among the ranks. Undo all three, failed or not.
            if model is not None:
                model.close()
            torch.set_num_threads(threads)
        del model
        partial.rename(directory)
    return directory
