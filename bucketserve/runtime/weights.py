"""Building the model module around one set of weight tensors: the set every graph shares.

The model is built on `meta`, transformed there (quantized, when the weights are packed; sharded, for tensor
parallelism), and only then given its tensors, by name: no float copy of a quantized weight is ever made."""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..checkpoints.base import Checkpoint
from ..config import CompileConfig
from ..models.config import ModelConfig
from ..models.llama import PagedCausalLM
from ..models.tensor_parallel import shard_model
from ..quantization.checkpoint_state import quantized_state
from ..quantization.transform import LM_HEAD, plan_of_state, quantize_model

logger = logging.getLogger(__name__)

# Names some checkpoints carry that are derived tables, not weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def tied_as_stored(model_config: ModelConfig, state: dict[str, torch.Tensor]) -> ModelConfig:
    """model_config, untied where the config says tie_word_embeddings but the checkpoint holds an lm_head.weight
    that differs from the embedding: transformers then keeps the two apart, and so must we (dropping the
    lm_head would change every logit)."""
    lm_head, embedding = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if not model_config.tie_word_embeddings or lm_head is None or embedding is None or torch.equal(lm_head, embedding):
        return model_config
    logger.warning("the config ties word embeddings, but the checkpoint's lm_head.weight differs from "
                   "model.embed_tokens.weight: keeping them apart, as transformers does")
    return dataclasses.replace(model_config, tie_word_embeddings=False)


def checkpoint_state(checkpoint: Checkpoint, compile_config: CompileConfig, model_config: ModelConfig):
    """The tensors a compile builds the model from: floats, or with quantization the packed weights, built
    tensor by tensor from the checkpoint (quantization/checkpoint_state.py). Nothing is read until used."""
    if compile_config.quantization is None:
        return checkpoint.float_tensors()
    return quantized_state(checkpoint.tensors, compile_config.quantization, model_config.tie_word_embeddings)


def build_model(
    model_config: ModelConfig, compile_config: CompileConfig, state: dict[str, torch.Tensor], device: torch.device,
    shard: tuple[int, int] | None = None,
) -> PagedCausalLM:
    """The model around `state`; with shard=(rank, world_size), rank's tensor-parallel shard (state is its shard).
    A state holding packed weights (`<module>.qweight`, ...) quantizes the model first (quantization/transform)."""
    dtype = getattr(torch, compile_config.dtype)
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    if model_config.tie_word_embeddings:
        state = {k: v for k, v in state.items() if not k.startswith(LM_HEAD + ".")}
    with torch.device("meta"):
        model = PagedCausalLM(model_config, compile_config.max_seq_len, compile_config.kvcache_block_size)
        plan = plan_of_state(state)
        if plan:
            quantize_model(model, plan, dtype, compile_config.activations)
        if shard is not None:
            shard_model(model, *shard)
    expected = dict(model.named_parameters())
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint weights do not match the {model_config.model_type} architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(f"weight {name} has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}")
        if expected[name].dtype != torch.float32 and tensor.dtype != expected[name].dtype:  # packed: never cast
            raise ValueError(f"weight {name} is {tensor.dtype}, its quantized layout holds {expected[name].dtype}")
    # Float weights take the model's dtype; packed ones (int8, uint8, float16 scales) stay as they are, no copy.
    assigned = {k: v.to(device=device, dtype=dtype if expected[k].dtype == torch.float32 else v.dtype)
                for k, v in state.items()}
    model.load_state_dict(assigned, strict=False, assign=True)
    model.tie_weights()
    model.make_buffers(device)
    model.requires_grad_(False)
    return model.eval()

