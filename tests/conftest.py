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


# The one more AOTInductor-compiled model, combining what the tiny Llama lacks: Qwen3 (q/k norms, head_dim 32
# != hidden/heads), tied embeddings and llama3 rope scaling. Two small decoders keep its compile short.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
QWEN3_COMPILE = dict(batch_size=2, max_seq_len=128, decoder_batch_sizes=[2, 1], kvcache_block_size=32, prefill_chunk_size=16)


@pytest.fixture(scope="session")
def qwen3_checkpoint(tmp_path_factory):
    """Qwen3 with head_dim 32, tied embeddings and llama3 rope scaling (original context 64 < max_seq_len)."""
    return build_random_checkpoint(
        tmp_path_factory.mktemp("qwen3-tied-llama3"), model_type="qwen3",
        head_dim=32, tie_word_embeddings=True, rope_scaling=dict(LLAMA3_ROPE),  # a copy: transformers edits it
    )


@pytest.fixture(scope="session")
def qwen3_compiled(qwen3_checkpoint):
    """qwen3_checkpoint compiled with AOTInductor (QWEN3_COMPILE): the in-memory model, before any save."""
    return AutoModelForCausalLM.from_pretrained(qwen3_checkpoint, export=True, **QWEN3_COMPILE)


# The tensor-parallel tests' model (tests/test_tensor_parallel.py, tests/test_torchrun.py): eager, so that the
# ranks' processes start in seconds; TP=2 and its single-process reference.
TP_COMPILE = dict(batch_size=4, max_seq_len=128, decoder_batch_sizes=[4, 1], kvcache_block_size=32, prefill_chunk_size=16,
                  compiler="eager")


def compile_tp(checkpoint, out, **options):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, **TP_COMPILE, **options)
    model.save_pretrained(out)
    model.close()
    return out


@pytest.fixture(scope="session")
def tp2_eager_dir(tiny_checkpoint, tmp_path_factory):
    return compile_tp(tiny_checkpoint, tmp_path_factory.mktemp("tp2-eager"), tensor_parallel_size=2)


@pytest.fixture(scope="session")
def tp1_eager_dir(tiny_checkpoint, tmp_path_factory):
    return compile_tp(tiny_checkpoint, tmp_path_factory.mktemp("tp1-eager"))
