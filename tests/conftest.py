"""Shared fixtures: tiny random checkpoints built locally, each compiled once per test session."""
from __future__ import annotations

import pytest

from bucketserve import AutoModelForCausalLM
from bucketserve.demo.checkpoint import build_random_checkpoint

# The compiled model most engine and server tests share: 8 rows max, decoders [8, 4, 1], a block size
# smaller than max_seq_len, and a prefill chunk smaller than most prompts.
TINY_COMPILE = dict(batch_size=8, max_seq_len=256, decoder_batch_sizes=[8, 4, 1], kvcache_block_size=64, prefill_chunk_size=32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Llama with grouped-query attention (4 heads, 2 KV heads), untied embeddings, a BPE tokenizer."""
    return build_random_checkpoint(tmp_path_factory.mktemp("tiny-llama"), shape="tiny", model_type="llama")


@pytest.fixture(scope="session")
def compiled_dir(tiny_checkpoint, tmp_path_factory):
    """tiny_checkpoint compiled with AOTInductor (TINY_COMPILE) and saved."""
    out = tmp_path_factory.mktemp("tiny-compiled")
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, **TINY_COMPILE).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def eager_dir(tiny_checkpoint, tmp_path_factory):
    """tiny_checkpoint 'compiled' in eager mode (same model code, no graphs): for fast engine tests."""
    out = tmp_path_factory.mktemp("tiny-eager")
    AutoModelForCausalLM.from_pretrained(tiny_checkpoint, export=True, compiler="eager", **TINY_COMPILE).save_pretrained(out)
    return out
