"""A GGUF file (llama.cpp's format), read with gguf-py: config and tokenizer from its metadata, tensors
memory-mapped and handed on as they are stored (float, or quantized blocks with their GGML type).

The config and the tokenizer are what transformers makes of the same file (`from_pretrained(dir,
gguf_file=...)`): transformers is the reference our tests hold the model to, so we take its reading of the
metadata rather than keep a second one. The tensors are ours: gguf-py's reader maps the file, and nothing is
decoded until a tensor is used, so a 7B file never needs a float copy of its weights beside the model's.
"""
from __future__ import annotations

import functools
import json
import mmap
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .base import Checkpoint, CheckpointError, QuantizedBlocks, StoredTensor
from .file_digest import sha256_of
from .gguf_metadata import check_finite, check_metadata, check_shape, expected_shapes, model_config_of
from .gguf_names import gguf_to_hf_names, rotary_row_order

GGUF_MAGIC = b"GGUF"
# GGUF architectures we compile (Mistral files are "llama" in llama.cpp), as general.architecture spells them.
ARCHITECTURES = ("llama", "qwen2", "qwen3")
FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
QUANTIZED_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")
# Tensors some GGUF files carry that are no weight of the transformers model (transformers skips them too).
IGNORED_TENSORS = ("rope_freqs.weight",)


def is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _row_checked_reader(gguf):
    """gguf-py's reader, which first checks each quantized tensor's rows are whole blocks, naming the tensor
    (gguf-py's own refusal names only the sizes)."""

    class RowCheckedReader(gguf.GGUFReader):
        def _build_tensors(self, start_offs, fields) -> None:
            for field in fields:
                _, name, _, dims, raw_dtype, _ = field.parts
                type_ = gguf.GGMLQuantizationType(int(raw_dtype[0]))
                block = gguf.GGML_QUANT_SIZES[type_][0]
                if len(dims) and int(dims[0]) % block:  # ggml's dims: the row length first
                    raise CheckpointError(
                        f"{self._checked_path}: tensor {bytes(name).decode(errors='replace')} is {type_.name}, whose "
                        f"rows are runs of {block} weights, but its rows hold {int(dims[0])}: the file is damaged "
                        f"(llama.cpp's quantizer stores such rows as Q5_0, Q5_1 or Q8_0); quantize it again")
            super()._build_tensors(start_offs, fields)

        def __init__(self, path, mode):
            self._checked_path = path
            super().__init__(path, mode)

    return RowCheckedReader


class GGUFCheckpoint(Checkpoint):
    format = "gguf"

    def __init__(self, path: Path):
        import gguf

        self.source = path
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        if not is_gguf_file(path):
            with open(path, "rb") as f:
                start = f.read(4)
            raise CheckpointError(f"{path} is not a GGUF file: it starts with {start!r}, a GGUF file with {GGUF_MAGIC!r}")
        try:
            # "c": copy-on-write pages, so torch can view them without a read-only warning; nothing is written back.
            self._reader = _row_checked_reader(gguf)(path, "c")
        except CheckpointError:
            raise
        except Exception as error:  # gguf-py reads past the end of a cut file as a failed reshape, index or struct
            size = path.stat().st_size
            raise CheckpointError(f"{path} ({size} bytes) is truncated or damaged: gguf-py could not read it "
                                  f"({type(error).__name__}: {error})") from error
        self.architecture = str(self._field("general.architecture"))
        if self.architecture not in ARCHITECTURES:
            raise CheckpointError(f"{path}: GGUF architecture {self.architecture!r} is not supported; bucketserve "
                                  f"compiles {', '.join(ARCHITECTURES)} (Mistral files are 'llama')")
        self._check_types_and_sizes()
        self.hf_config = self._read_hf_config()
        self.tensors = GGUFTensors(self._reader, self.hf_config, self.architecture, path)

    def _field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def _check_types_and_sizes(self) -> None:
        size = self.source.stat().st_size
        unsupported = {}
        for tensor in self._reader.tensors:
            type_name = tensor.tensor_type.name
            if type_name not in FLOAT_TYPES and type_name not in QUANTIZED_TYPES:
                unsupported.setdefault(type_name, tensor.name)
            if tensor.data_offset + tensor.n_bytes > size:
                raise CheckpointError(f"{self.source} is truncated: tensor {tensor.name} ends at byte "
                                      f"{tensor.data_offset + tensor.n_bytes}, the file has {size}")
        if unsupported:
            listed = ", ".join(f"{t} (e.g. {name})" for t, name in sorted(unsupported.items()))
            raise CheckpointError(f"{self.source} holds tensors of types bucketserve does not load: {listed}; "
                                  f"it loads {', '.join([*FLOAT_TYPES, *QUANTIZED_TYPES])}")

    def _read_hf_config(self) -> dict[str, Any]:
        if self._field("tokenizer.ggml.tokens") is None:
            raise CheckpointError(f"{self.source} has no tokenizer (no tokenizer.ggml.tokens in its metadata); "
                                  "bucketserve takes the tokenizer from the GGUF file: use a file converted with one")
        check_metadata(self._reader, self.architecture, self.source)  # before transformers or we build from any count
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.source.parent, gguf_file=self.source.name).to_dict()
        # The compiled directory holds float (or our own quantized) weights, not a GGUF-quantized HF model.
        for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
            config.pop(key, None)
        return config

    @functools.cached_property
    def tokenizer(self):
        """transformers' tokenizer converted from the file's metadata (slow for big vocabularies: once)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source.parent, gguf_file=self.source.name)

    def write_support_files(self, out_dir: Path) -> None:
        (out_dir / "config.json").write_text(json.dumps(self.hf_config, indent=2, sort_keys=True))
        self.tokenizer.save_pretrained(out_dir)

    def describe(self) -> dict[str, Any]:
        types = {tensor.name: tensor.tensor_type.name for tensor in self._reader.tensors}
        return {"format": self.format, "file": self.source.name, "bytes": self.source.stat().st_size,
                "sha256": sha256_of(self.source), "architecture": self.architecture,
                "tensor_type_counts": dict(sorted(Counter(types.values()).items())), "tensor_types": types}

    def release_pages(self) -> None:
        mapped = getattr(self._reader.data, "_mmap", None)
        if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
            mapped.madvise(mmap.MADV_DONTNEED)


class GGUFTensors(Mapping[str, StoredTensor]):
    """The file's tensors by Hugging Face name, each built when it is read: a view of the mapped file, with
    llama's q/k rows put back in Hugging Face's rotary order (a copy of those rows only)."""

    def __init__(self, reader, hf_config: dict[str, Any], architecture: str, path: Path):
        self._path = path
        shapes = expected_shapes(model_config_of(hf_config, path))
        names = gguf_to_hf_names(architecture, hf_config["num_hidden_layers"])  # bounded: check_metadata
        self._by_name = {}
        unknown = []
        for tensor in reader.tensors:
            if tensor.name in IGNORED_TENSORS:
                continue
            if tensor.name not in names:
                unknown.append(tensor.name)
                continue
            self._by_name[names[tensor.name]] = tensor
            check_shape(path, tensor.name, names[tensor.name], tuple(reversed([int(d) for d in tensor.shape])), shapes)
        if unknown:
            raise CheckpointError(f"{path} holds tensors no {architecture} model of transformers has: {unknown[:5]}")
        # llama.cpp's llama architecture rotates adjacent pairs of each head, transformers the two halves:
        # convert_hf_to_gguf permuted q and k rows, so we undo it (as transformers' GGUF loader does).
        self._rotary_heads = {}
        if architecture == "llama":
            heads, kv_heads = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
            self._rotary_heads = {"q_proj": heads, "k_proj": kv_heads}

    def __getitem__(self, name: str) -> StoredTensor:
        tensor = self._by_name[name]
        type_name = tensor.tensor_type.name
        shape = tuple(reversed([int(d) for d in tensor.shape]))
        if type_name in FLOAT_TYPES:
            stored = torch.from_numpy(tensor.data).view(FLOAT_TYPES[type_name]).view(shape)
            check_finite(self._path, tensor.name, type_name, stored)
        else:
            stored = QuantizedBlocks(type_name, shape, torch.from_numpy(tensor.data))
            check_finite(self._path, tensor.name, type_name, stored.data)
        heads = next((h for proj, h in self._rotary_heads.items() if f".{proj}." in name), None)
        if heads is None:
            return stored
        order = rotary_row_order(shape[0], heads)
        return stored.select_rows(order) if isinstance(stored, QuantizedBlocks) else stored[order]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def stored_type(self, name: str) -> str:
        """The GGML type name a tensor is stored in ("F32", "Q4_1", ...), without reading it."""
        return self._by_name[name].tensor_type.name
