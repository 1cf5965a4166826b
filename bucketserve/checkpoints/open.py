"""Opening a checkpoint by what the user gave: a GGUF file, a directory (or a cached hub id) with a
gguf_file in it, or a Hugging Face safetensors directory."""
from __future__ import annotations

import os
from pathlib import Path

from .base import Checkpoint, CheckpointError
from .gguf_checkpoint import GGUFCheckpoint, is_gguf_file
from .safetensors_checkpoint import SafetensorsCheckpoint


def open_checkpoint(model_id: str | os.PathLike, gguf_file: str | os.PathLike | None = None) -> Checkpoint:
    """The checkpoint at model_id; with gguf_file (transformers' spelling), that file inside model_id."""
    path = Path(model_id).expanduser()
    if gguf_file is not None:
        directory = resolve_model_dir(model_id)
        file = directory / gguf_file
        if not file.is_file():
            present = sorted(p.name for p in directory.glob("*.gguf"))
            raise FileNotFoundError(f"gguf_file {str(gguf_file)!r} does not exist in {directory} (GGUF files there: "
                                    f"{', '.join(present) or 'none'})")
        return GGUFCheckpoint(file)
    if path.is_file():
        if path.suffix == ".gguf" or is_gguf_file(path):
            return GGUFCheckpoint(path)
        raise CheckpointError(f"{path} is a file, but neither a GGUF file nor a checkpoint directory; give a "
                              "GGUF file, or the directory of a Hugging Face checkpoint")
    if path.suffix == ".gguf" and not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return SafetensorsCheckpoint(resolve_model_dir(model_id))


def resolve_model_dir(model_id: str | os.PathLike) -> Path:
    """A local directory as is; a hub id through the local HF cache only (no network at run time)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model_id), local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError) as err:
        raise FileNotFoundError(
            f"model {str(model_id)!r} not found: it is not a local directory ({path.resolve()}) and not in the "
            f"local Hugging Face cache ({constants.HF_HUB_CACHE}); bucketserve never downloads at run time, so "
            f"download it first (e.g. `huggingface-cli download {model_id}`) or pass a directory"
        ) from err


