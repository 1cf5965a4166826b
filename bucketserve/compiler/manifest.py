"""The compiled directory's manifest: what was compiled, with which torch, and a sha256 of every file.

Loading checks it first, so a broken directory fails here with the file's name, not deep inside torch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..checkpoints.file_digest import sha256_of
from ..checkpoints.safetensors_checkpoint import SINGLE_FILE
from ..compiled_options import normalized_manifest_config
from ..config import CompileConfig
from ..models.config import ModelConfig
from .directory_layout import GRAPHS_DIR, other_rank_file, rank_dir
from .graph_specs import PREFILL, decoder_name
from .native_files import NativeFileError, check_native_file

MANIFEST = "bucketserve_manifest.json"
# 2: decoder graphs take context_positions, of any length up to max_seq_len
# 3: so does the prefill graph, and its chunk length is free
# 4: CPU fp32 decoders multiply through weights reordered at load time (graphs/*.packed.json)
# 5: CPU fp32 decoders call torch.ops.bucketserve kernels, from graphs/bucketserve_kernels.so
# 6: the prefill graph takes a free number of rows; quantization and kv_cache_dtype in compile_config
FORMAT_VERSION = 7  # 7: manifest_sha256 seals the rest of the manifest; graphs/<graph>.inputs.json beside each graph
DIGEST_KEY = "manifest_sha256"
# What every manifest holds, with the JSON type it has (quantized_tensors only with quantization).
REQUIRED_FIELDS = {"format_version": int, "torch_version": str, "compile_config": dict, "model_config": dict,
                   "source": dict, "compile_seconds": dict, "files": dict, DIGEST_KEY: str}


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
    (directory / MANIFEST).write_text(json.dumps(seal(manifest), indent=2))


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 over every field but the digest itself (canonical JSON): options, model config and the files'
    checksums alike, so an edit to any of them is caught before a graph runs. It guards against damage and
    careless edits, not against someone who recomputes it (docs/CHECKPOINTS.md, "What a compiled directory is")."""
    sealed = {key: value for key, value in manifest.items() if key != DIGEST_KEY}
    return hashlib.sha256(json.dumps(sealed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def record_in_manifest(directory: Path, key: str, value: Any) -> None:
    """Add one record to a compiled directory's manifest after it was written (the decoder planner's inputs and
    prediction), sealed again: the digest covers it like every other field."""
    path = Path(directory) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest[key] = value
    path.write_text(json.dumps(seal(manifest), indent=2))


def seal(manifest: dict[str, Any]) -> dict[str, Any]:
    return {**{key: value for key, value in manifest.items() if key != DIGEST_KEY}, DIGEST_KEY: manifest_digest(manifest)}


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, checked: its structure, its digest, its options through the compile-time validator and its
    model config against the directory's config.json. Any fault is a CompiledModelError naming file and field."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CompiledModelError(
            f"{directory} is not a bucketserve compiled directory ({MANIFEST} is missing); "
            f"compile it with from_pretrained(..., export=True) and save_pretrained()"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CompiledModelError(f"{path} is not valid JSON ({err}); recompile the model") from err
    if not isinstance(manifest, dict):
        raise CompiledModelError(f"{path} holds a JSON {type(manifest).__name__}, not an object; recompile the model")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CompiledModelError(
            f"{directory} has manifest format {manifest.get('format_version')!r}, this bucketserve reads "
            f"{FORMAT_VERSION}; recompile the model"
        )
    for key, kind in REQUIRED_FIELDS.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            found = "missing" if key not in manifest else f"a {type(manifest[key]).__name__}"
            raise CompiledModelError(f"{path}: field {key!r} is {found}, not a {kind.__name__}; recompile the model")
    if manifest[DIGEST_KEY] != manifest_digest(manifest):
        raise CompiledModelError(f"{path} does not match its own {DIGEST_KEY} (the manifest was edited or damaged); "
                                 "recompile the model")
    _check_files_table(path, manifest["files"])
    manifest_configs(manifest, directory)  # raises on options or a model config a compile could not have written
    return manifest


def _check_files_table(path: Path, files: dict[str, Any]) -> None:
    for name, entry in files.items():
        ok = isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int) \
            and not isinstance(entry.get("bytes"), bool) and entry["bytes"] >= 0
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not ok or not inside:
            raise CompiledModelError(f"{path}: field files[{name!r}] is {entry!r}, not a file inside the directory with "
                                     "its sha256 and bytes; recompile the model")


def manifest_configs(manifest: dict[str, Any], directory: Path) -> tuple[CompileConfig, ModelConfig]:
    """The manifest's compile and model configs, as a compile normalizes them (config.build_compile_config)."""
    path = directory / MANIFEST
    try:
        model_config = ModelConfig.from_dict(manifest["model_config"])
    except TypeError as err:
        raise CompiledModelError(f"{path}: field model_config is not a model config ({err}); recompile the model") from err
    _check_model_config(path, model_config, directory)
    try:
        compile_config = normalized_manifest_config(manifest["compile_config"], model_config)
    except (ValueError, TypeError) as err:
        raise CompiledModelError(f"{path}: {err}; recompile the model") from err
    if compile_config.device == "cuda" and not torch.cuda.is_available():
        raise CompiledModelError(f"{path}: compile_config.device is 'cuda', but this torch ({torch.__version__}) sees no "
                                 "CUDA device; load it on a machine with a GPU, or recompile with device='cpu'")
    missing = [name for name in required_files(compile_config) if name not in manifest["files"]]
    if missing:
        raise CompiledModelError(f"{path}: compile_config (tensor_parallel_size {compile_config.tensor_parallel_size}, "
                                 f"compiler {compile_config.compiler!r}, decoder_batch_sizes "
                                 f"{list(compile_config.decoder_batch_sizes)}) needs {missing[0]}, which the manifest "
                                 "does not list; recompile the model")
    return compile_config, model_config


def required_files(compile_config: CompileConfig) -> list[str]:
    """The files (paths inside the directory) the options say the directory holds: each rank's weights and,
    compiled with AOTInductor, each rank's graphs with what they take beside them."""
    world = compile_config.tensor_parallel_size
    names = []
    for rank in range(world):
        folder = rank_dir(Path(), rank, world)
        names.append(str(folder / SINGLE_FILE))
        if compile_config.compiler == "aoti":
            graphs = [PREFILL, *(decoder_name(b) for b in compile_config.decoder_batch_sizes)]
            names += [str(folder / GRAPHS_DIR / f"{graph}{suffix}") for graph in graphs for suffix in (".pt2", ".inputs.json")]
    return names


def _check_model_config(path: Path, model_config: ModelConfig, directory: Path) -> None:
    """model_config is what the directory's config.json (covered by the files' checksums) says, but that a
    compile may untie embeddings the checkpoint stores apart (runtime.weights.tied_as_stored)."""
    config_json = directory / "config.json"
    if not config_json.is_file():
        return  # verify_manifest names it as missing
    try:
        from_json = ModelConfig.from_hf_dict(json.loads(config_json.read_text()))
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as err:
        raise CompiledModelError(f"{config_json} is not a config a compile wrote ({err}); recompile the model") from err
    for field in dataclasses.fields(ModelConfig):
        recorded, expected = getattr(model_config, field.name), getattr(from_json, field.name)
        if field.name == "tie_word_embeddings" and recorded is False and expected is True:
            continue
        if recorded != expected or type(recorded) is not type(expected):
            raise CompiledModelError(f"{path}: field model_config.{field.name} is {recorded!r}, but {config_json.name} "
                                     f"makes it {expected!r}; recompile the model")


def weight_like_files(directory: Path) -> list[Path]:
    """Files a checkpoint loader may read as weights: safetensors files and their index."""
    return [p for p in directory.glob("*.safetensors*") if p.is_file()] if directory.is_dir() else []


def other_files(directory: Path) -> list[str]:
    """Files of `directory` that are no part of the compiled model its manifest describes (all of them where it
    has no readable manifest): what replacing the directory would lose."""
    if not directory.is_dir():
        return []
    present = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    try:
        listed = set(json.loads((directory / MANIFEST).read_text())["files"]) | {MANIFEST}
    except (OSError, ValueError, TypeError, KeyError):
        listed = set()
    return [name for name in present if name not in listed]


def verify_manifest(directory: Path, check_hashes: bool = True, rank: int | None = None) -> dict[str, Any]:
    """rank: check only the files that rank needs (the shared ones and its own rank{r}/), as on a host that
    runs only that rank of a tensor-parallel model."""
    manifest = read_manifest(directory)
    unlisted = sorted(p.name for p in weight_like_files(directory) if p.name not in manifest["files"])
    if unlisted:  # another model's weights, copied in: the loader could take them for this model's
        raise CompiledModelError(f"{directory} holds weight files its manifest does not list ({', '.join(unlisted)}); "
                                 "remove them, or save the model to an empty directory")
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
        try:  # a cut package or library fails here, named, not inside torch (or as SIGBUS)
            check_native_file(path)
        except NativeFileError as err:
            raise CompiledModelError(str(err)) from err
    return manifest
