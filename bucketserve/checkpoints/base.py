"""What every checkpoint format yields: the model's transformers config, its tokenizer files and its named
tensors, each either a float tensor or quantized blocks with their type. Nothing downstream knows the format."""
from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as it is; the message names the file and what is wrong."""


@dataclass(frozen=True)
class QuantizedBlocks:
    """A weight as a GGUF file stores it: each row a run of blocks of one GGML type, not decoded.

    Handed on as it is so that a quantized model can keep the file's own scales and values (quantization/);
    dequantize() is the float view, computed by gguf-py as transformers computes it.
    """

    type_name: str  # the GGML type, e.g. "Q8_0", "Q4_1" (gguf.GGMLQuantizationType names)
    shape: tuple[int, int]  # [out_features, in_features], torch's order
    data: torch.Tensor  # uint8 [out_features, bytes per row]: the file's bytes (memory-mapped until rows are selected)

    def dequantize(self) -> torch.Tensor:
        """float32 [out_features, in_features]."""
        import gguf

        values = gguf.dequantize(self.data.numpy(), gguf.GGMLQuantizationType[self.type_name])
        return torch.from_numpy(values).view(self.shape)

    def select_rows(self, index: torch.Tensor) -> QuantizedBlocks:
        """The rows at `index` (a copy): rows are independent runs of blocks, so this is exact."""
        return QuantizedBlocks(self.type_name, (len(index), self.shape[1]), self.data[index].contiguous())


StoredTensor = torch.Tensor | QuantizedBlocks


class FloatTensors(Mapping[str, torch.Tensor]):
    """A checkpoint's tensors as floats, each dequantized when it is read (never all at once)."""

    def __init__(self, stored: Mapping[str, StoredTensor]):
        self._stored = stored

    def __getitem__(self, name: str) -> torch.Tensor:
        tensor = self._stored[name]
        return tensor.dequantize() if isinstance(tensor, QuantizedBlocks) else tensor

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)


class Checkpoint(abc.ABC):
    """One checkpoint, opened (open.open_checkpoint): nothing is read from its weights until a tensor is used."""

    format: ClassVar[str]  # "safetensors", "gguf"
    source: Path  # what open_checkpoint takes to open it again (a compile rank in another process does)
    hf_config: dict[str, Any]  # config.json, as transformers writes it
    tensors: Mapping[str, StoredTensor]  # by Hugging Face parameter name

    def float_tensors(self) -> Mapping[str, torch.Tensor]:
        return FloatTensors(self.tensors)

    @abc.abstractmethod
    def write_support_files(self, out_dir: Path) -> None:
        """config.json, generation_config.json and the tokenizer files (with the chat template) into out_dir."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records of the source: its format, file(s) and tensor types."""

    @abc.abstractmethod
    def release_pages(self) -> None:
        """Hand back the pages of the files that reading made resident (see MappedWeights.release_pages)."""
