"""Finding a checkpoint (local dir or the local Hugging Face cache) and reading its safetensors weights."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


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


def read_hf_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: a Hugging Face checkpoint needs its config.json")
    return json.loads(config_path.read_text())


def weight_files(model_dir: Path) -> list[Path]:
    if (model_dir / INDEX_FILE).is_file():
        index = json.loads((model_dir / INDEX_FILE).read_text())
        return [model_dir / name for name in sorted(set(index["weight_map"].values()))]
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    found = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
    hint = f" (found {', '.join(found)}: pickle weights are never loaded; convert them to safetensors)" if found else ""
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {model_dir}{hint}")


def load_safetensors(model_dir: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(model_dir):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                state[name] = f.get_tensor(name)
    return state
