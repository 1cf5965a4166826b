"""Building the model module around one set of weight tensors: the set every graph shares."""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import CompileConfig
from ..models.config import ModelConfig
from ..models.llama import LlamaForCausalLM
from ..models.tensor_parallel import shard_model

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


def build_model(
    model_config: ModelConfig, compile_config: CompileConfig, state: dict[str, torch.Tensor], device: torch.device,
    shard: tuple[int, int] | None = None,
) -> LlamaForCausalLM:
    """The model around `state`; with shard=(rank, world_size), rank's tensor-parallel shard (state is its shard)."""
    dtype = getattr(torch, compile_config.dtype)
    with torch.device("meta"):
        model = LlamaForCausalLM(model_config, compile_config.max_seq_len, compile_config.kvcache_block_size)
        if shard is not None:
            shard_model(model, *shard)
    expected = dict(model.named_parameters())
    state = {k: v for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    if model_config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
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
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False, assign=True)
    model.tie_weights()
    model.make_buffers(device)
    model.requires_grad_(False)
    return model.eval()


def weights_to_save(model: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """The state dict with a tied lm_head stored once (as HF does), contiguous for safetensors."""
    state = {name: p.detach().contiguous() for name, p in model.named_parameters()}
    return state
