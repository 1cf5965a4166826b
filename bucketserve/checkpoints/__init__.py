"""Checkpoint formats side by side behind one interface (base.Checkpoint): each yields the transformers
config, the tokenizer files and the named tensors, float or quantized blocks with their type."""
from .base import Checkpoint, CheckpointError, QuantizedBlocks
from .open import open_checkpoint, resolve_model_dir

__all__ = ["Checkpoint", "CheckpointError", "QuantizedBlocks", "open_checkpoint", "resolve_model_dir"]
