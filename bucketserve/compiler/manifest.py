"""The compiled directory's manifest: what was compiled, with which torch, and a sha256 of every file.

Loading checks it first, so a broken directory fails here with the file's name, not deep inside torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.file_digest import sha256_of
from .directory_layout import other_rank_file, rank_dir

MANIFEST = "bucketserve_manifest.json"
# 2: decoder graphs take context_positions, of any length up to max_seq_len
# 3: so does the prefill graph, and its chunk length is free
# 4: CPU fp32 decoders multiply through weights reordered at load time (graphs/*.packed.json)
# 5: CPU fp32 decoders call torch.ops.bucketserve kernels, from graphs/bucketserve_kernels.so
FORMAT_VERSION = 6  # 6: the prefill graph takes a free number of rows; quantization and kv_cache_dtype in compile_config


class CompiledModelError(RuntimeError):
    """A compiled directory that cannot be loaded as it is; the message says which file and what to do."""


def write_manifest(directory: Path, compile_config: dict, model_config: dict, compile_seconds: dict,
                   source: dict, quantized_tensors: dict | None = None) -> None:
    """source: what the model was compiled from (Checkpoint.describe: format, file, tensor types).
    quantized_tensors: with quantization, each packed module's bits, source type and whether it was kept."""
    files = {
        str(p.relative_to(directory)): {"sha256": sha256_of(p), "bytes": p.stat().st_size}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "torch_version": torch.__version__,
        "compile_config": compile_config,
        "model_config": model_config,
        "source": source,
        **({"quantized_tensors": quantized_tensors} if quantized_tensors else {}),
        "compile_seconds": compile_seconds,
        "files": files,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2))


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CompiledModelError(
            f"{directory} is not a bucketserve compiled directory ({MANIFEST} is missing); "
            f"compile it with from_pretrained(..., export=True) and save_pretrained()"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CompiledModelError(f"{path} is not valid JSON ({err}); recompile the model") from err


def weight_like_files(directory: Path) -> list[Path]:
    """Files a checkpoint loader may read as weights: safetensors files and their index."""
    return [p for p in directory.glob("*.safetensors*") if p.is_file()] if directory.is_dir() else []


def verify_manifest(directory: Path, check_hashes: bool = True, rank: int | None = None) -> dict[str, Any]:
    """rank: check only the files that rank needs (the shared ones and its own rank{r}/), as on a host that
    runs only that rank of a tensor-parallel model."""
    manifest = read_manifest(directory)
    unlisted = sorted(p.name for p in weight_like_files(directory) if p.name not in manifest["files"])
    if unlisted:  # another model's weights, copied in: the loader could take them for this model's
        raise CompiledModelError(f"{directory} holds weight files its manifest does not list ({', '.join(unlisted)}); "
                                 "remove them, or save the model to an empty directory")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CompiledModelError(
            f"{directory} has manifest format {manifest.get('format_version')!r}, this bucketserve reads "
            f"{FORMAT_VERSION}; recompile the model"
        )
    compiled_with = manifest.get("torch_version")
    if manifest["compile_config"].get("compiler") == "aoti" and compiled_with != torch.__version__:
        raise CompiledModelError(
            f"{directory / MANIFEST} says its graphs were compiled with torch {compiled_with} and this is torch "
            f"{torch.__version__}, which cannot load them; recompile the model with this torch"
        )
    for name, expected in manifest["files"].items():
        path = directory / name
        if rank is not None and other_rank_file(name, rank):
            continue
        if not path.is_file():
            if rank is not None:
                raise CompiledModelError(
                    f"{path} is missing: this host runs rank {rank}, which needs the compiled directory's shared files "
                    f"and {rank_dir(Path(), rank, 2)}/; copy them from the directory as compiled"
                )
            raise CompiledModelError(f"{path} is missing from the compiled directory; recompile the model")
        if path.stat().st_size != expected["bytes"]:
            raise CompiledModelError(
                f"{path} has {path.stat().st_size} bytes, the manifest says {expected['bytes']} "
                f"(truncated or replaced); recompile the model"
            )
        if check_hashes and sha256_of(path) != expected["sha256"]:
            raise CompiledModelError(f"{path} does not match its sha256 in {MANIFEST} (modified); recompile the model")
    return manifest
