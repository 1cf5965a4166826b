"""A Hugging Face checkpoint directory: config.json, tokenizer files and safetensors weights (one file or shards)."""
from __future__ import annotations

import json
import logging
import math
import mmap
import os
import shutil
import struct
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .base import Checkpoint, CheckpointError

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


# Files a Hugging Face checkpoint keeps beside its weights that tokenizers and generation need.
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
# Any of these makes a tokenizer AutoTokenizer can load (with tokenizer_config.json beside it).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def read_hf_config(model_dir: Path) -> dict:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        hint = ""
        found = sorted(p.name for p in model_dir.glob("*.gguf"))
        if found:
            hint = f" (it holds {', '.join(found)}: to compile a GGUF file, pass gguf_file={found[0]!r} or the file's path)"
        raise FileNotFoundError(f"{config_path} is missing: a Hugging Face checkpoint needs its config.json{hint}")
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


# safetensors' dtype names (its format spec) as torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class MappedWeights:
    """A checkpoint's safetensors tensors, mapped from its files: nothing is read until a tensor is used.

    Read through our own copy-on-write mappings (not safetensors' loader) so that release_pages can hand
    back what loading read: a compiled model reads most plain weights once, to reorder them
    (compiler/packed_weights.py), and never again.
    """

    def __init__(self, files: list[Path]):
        self.tensors: dict[str, torch.Tensor] = {}
        self.files: dict[str, Path] = {}  # the file each tensor is in
        self._maps: list[mmap.mmap] = []
        for file in files:
            self._map(file)

    def _map(self, file: Path) -> None:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            try:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if 8 + header_len > size:
                    raise ValueError(f"header of {header_len} bytes")
                header = json.loads(f.read(header_len))
            except (struct.error, ValueError) as err:
                raise CheckpointError(f"{file} is not a safetensors file: {err}") from err
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
        self._maps.append(mapped)
        data_start = 8 + header_len
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES.get(entry.get("dtype"))
            begin, end = entry["data_offsets"]
            numel = math.prod(entry["shape"])
            if dtype is None or end - begin != numel * dtype.itemsize or data_start + end > size:
                raise CheckpointError(f"{file}: tensor {name} ({entry.get('dtype')}, shape {entry['shape']}, bytes "
                                 f"{begin}..{end}) does not fit the file; it is damaged or of an unknown dtype")
            self.files[name] = file
            if numel == 0:
                self.tensors[name] = torch.empty(entry["shape"], dtype=dtype)
            else:
                flat = torch.frombuffer(mapped, dtype=dtype, count=numel, offset=data_start + begin)
                self.tensors[name] = flat.view(entry["shape"])

    def release_pages(self) -> None:
        """Drop the pages loading read from this process's memory; the files stay mapped, and a page read
        again comes back from the file (its values unchanged: nothing writes to the plain weights)."""
        for mapped in self._maps:
            if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED)


class FiniteTensors(Mapping[str, torch.Tensor]):
    """A checkpoint's mapped tensors, each float one checked finite the first time it is read: a NaN or Inf
    weight would compile and then generate token 0 forever."""

    def __init__(self, weights: MappedWeights):
        self._weights = weights
        self._checked: set[str] = set()

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._weights.tensors[name]
        if name not in self._checked:
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise CheckpointError(f"{self._weights.files[name]}: tensor {name} holds NaN or Inf values; the file "
                                      "is damaged: re-download or re-save it")
            self._checked.add(name)
        return tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights.tensors)

    def __len__(self) -> int:
        return len(self._weights.tensors)


def map_safetensors(model_dir: Path) -> MappedWeights:
    return MappedWeights(weight_files(model_dir))


class SafetensorsCheckpoint(Checkpoint):
    """A checkpoint directory as transformers saves one; its tensors are mapped, not read."""

    format = "safetensors"

    def __init__(self, model_dir: Path):
        self.source = model_dir
        self.hf_config = read_hf_config(model_dir)
        self._files = weight_files(model_dir)
        self._weights = MappedWeights(self._files)
        self.tensors = FiniteTensors(self._weights)

    def write_support_files(self, out_dir: Path) -> None:
        for name in COPIED_FILES:
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, out_dir / name)
        if not any((self.source / name).is_file() for name in TOKENIZER_FILES):
            logger.warning("%s has no tokenizer files (%s): the compiled directory will have none, so LLM() and the "
                           "server will need tokenizer=... pointing at one", self.source, ", ".join(TOKENIZER_FILES))

    def describe(self) -> dict[str, Any]:
        dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in self._weights.tensors.values())  # no read
        return {"format": self.format, "files": [f.name for f in self._files],
                "bytes": sum(f.stat().st_size for f in self._files), "tensor_dtypes": dict(sorted(dtypes.items()))}

    def release_pages(self) -> None:
        self._weights.release_pages()
