"""The compiled model against Hugging Face transformers on the same weights (fp32).

Logits of prefill and of every decoder graph must be within 1e-4 of the logit scale (max |logit|); greedy
tokens must match HF generate. Config variety runs with compiler="eager" (the same model code and runtime
path, no graphs); the compiled graphs are checked on the two AOTInductor models of conftest.
"""
from __future__ import annotations

import random

import pytest
import torch
import transformers

from bucketserve import AutoModelForCausalLM
from bucketserve.demo.checkpoint import build_random_checkpoint

RELATIVE_TOLERANCE = 1e-4
# Scaled frequencies with an original context (64) shorter than the prompts, so the scaling matters.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def hf_model(checkpoint):
    return transformers.AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


@torch.no_grad()
def hf_next_logits(hf, token_ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([token_ids])).logits[0, -1]


def assert_close_to_hf(logits: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    scale = reference.abs().max().item()
    diff = (logits - reference).abs().max().item()
    assert diff <= RELATIVE_TOLERANCE * scale, f"{what}: max |logit diff| {diff:.3g} > {RELATIVE_TOLERANCE} * {scale:.3g}"


def random_prompts(lengths: list[int], vocab_size: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def shuffled_block_tables(model, lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Enough blocks for each length, drawn out of order from blocks 1.. (block 0 is the reserved dummy)."""
    config = model.rbln_config
    free = list(range(1, config.kvcache_num_blocks))
    random.Random(seed).shuffle(free)
    tables = []
    for length in lengths:
        needed = -(-length // config.kvcache_block_size)
        tables.append([free.pop() for _ in range(needed)])
    return tables


def check_against_hf(model, hf, prompt_lengths: list[int], decode_groups: list[int], steps_per_group: int) -> None:
    """Prefill every prompt, then decode the first N sequences for each N in decode_groups; compare all logits."""
    prompts = random_prompts(prompt_lengths, model.config.vocab_size)
    final_lengths = [n + 1 + steps_per_group * sum(1 for g in decode_groups if i < g) for i, n in enumerate(prompt_lengths)]
    assert max(final_lengths) <= model.rbln_config.max_seq_len
    tables = shuffled_block_tables(model, final_lengths)
    sequences = []
    for prompt, table in zip(prompts, tables, strict=True):
        logits = model.prefill(prompt, table).logits
        assert_close_to_hf(logits, hf_next_logits(hf, prompt), f"prefill of {len(prompt)} tokens")
        sequences.append(prompt + [int(logits.argmax())])

    for num_seqs in decode_groups:
        batch = model.decoder_batch_size_for(num_seqs)
        steps_before = model.runner.decode_steps_per_decoder[batch]
        for _ in range(steps_per_group):
            rows = sequences[:num_seqs]
            logits = model.decode([s[-1] for s in rows], [len(s) - 1 for s in rows], tables[:num_seqs])
            assert logits.shape == (num_seqs, model.config.vocab_size)
            for row, sequence in zip(logits, rows, strict=True):
                assert_close_to_hf(row, hf_next_logits(hf, sequence), f"decoder_batch_{batch} with {num_seqs} rows")
                sequence.append(int(row.argmax()))
        assert model.runner.decode_steps_per_decoder[batch] == steps_before + steps_per_group


EAGER_COMPILE = dict(batch_size=4, max_seq_len=128, kvcache_block_size=32, prefill_chunk_size=16, decoder_batch_sizes=[4, 2, 1])

CONFIGS = {
    "llama-gqa": ("llama", {}, {}),
    "llama-tied": ("llama", dict(tie_word_embeddings=True), {}),
    "llama-llama3-rope": ("llama", dict(rope_scaling=dict(LLAMA3_ROPE)), {}),
    "qwen2": ("qwen2", {}, {}),
    "qwen3-head-dim-32": ("qwen3", dict(head_dim=32), {}),
    "mistral": ("mistral", dict(sliding_window=128), {}),
    "llama-one-block-per-sequence": ("llama", {}, dict(kvcache_block_size=128)),
    "llama-chunk-not-dividing-max-seq-len": ("llama", {}, dict(prefill_chunk_size=24)),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_eager_logits_match_hf(name, tmp_path):
    model_type, overrides, options = CONFIGS[name]
    checkpoint = build_random_checkpoint(tmp_path, model_type=model_type, **overrides)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", **{**EAGER_COMPILE, **options})
    # Prompt lengths: not multiples of the chunk, one exactly a chunk, one a single token, one near max_seq_len.
    check_against_hf(model, hf_model(checkpoint), [37, 16, 1, 100], decode_groups=[4, 3, 2, 1], steps_per_group=2)
    assert all(count > 0 for count in model.runner.decode_steps_per_decoder.values())


def test_compiled_graphs_match_hf(compiled_dir, tiny_checkpoint):
    """GQA Llama, block size 64 < max_seq_len 256, prefill chunk 32, decoders [8, 4, 1] (AOTInductor)."""
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    assert model.rbln_config.kvcache_block_size < model.rbln_config.max_seq_len
    # 8 -> decoder 8; 5 -> 8 with 3 padding rows; 4 -> 4; 3 -> 4 with a padding row; 2 -> 4; 1 -> 1.
    check_against_hf(
        model, hf_model(tiny_checkpoint), [70, 33, 5, 129, 64, 1, 100, 45], decode_groups=[8, 5, 4, 3, 2, 1], steps_per_group=2
    )
    assert set(model.runner.decode_steps_per_decoder) == {8, 4, 1}
    assert all(count > 0 for count in model.runner.decode_steps_per_decoder.values())


def test_compiled_qwen3_tied_llama3_rope_matches_hf(qwen3_compiled, qwen3_checkpoint):
    """Qwen3 with head_dim 32, tied embeddings, llama3 rope past its original 64-token context (AOTInductor)."""
    check_against_hf(qwen3_compiled, hf_model(qwen3_checkpoint), [90, 37], decode_groups=[2, 1], steps_per_group=3)


def hf_greedy(hf, prompt: list[int], max_new_tokens: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("num_seqs", [1, 3, 6])
def test_greedy_tokens_match_hf_generate_for_32_steps(compiled_dir, tiny_checkpoint, num_seqs):
    """1 row on decoder 1; 3 rows on decoder 4 (a padding row); 6 rows on decoder 8 (two padding rows)."""
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    hf = hf_model(tiny_checkpoint)
    prompts = random_prompts([23, 70, 9, 41, 64, 100][:num_seqs], model.config.vocab_size, seed=num_seqs)
    # Blocks out of row order (as seq 0 in [5, 6], seq 1 in [2, 3]): handed out from the top block down.
    block_size, next_free = model.rbln_config.kvcache_block_size, model.rbln_config.kvcache_num_blocks
    tables = []
    for prompt in prompts:
        needed = -(-(len(prompt) + 32) // block_size)
        next_free -= needed
        tables.append(list(range(next_free, next_free + needed)))
    generated = [[int(model.prefill(p, t).logits.argmax())] for p, t in zip(prompts, tables, strict=True)]
    for _ in range(31):
        logits = model.decode(
            [g[-1] for g in generated], [len(p) + len(g) - 1 for p, g in zip(prompts, generated, strict=True)], tables
        )
        for g, row in zip(generated, logits, strict=True):
            g.append(int(row.argmax()))
    assert model.runner.decode_steps_per_decoder[model.decoder_batch_size_for(num_seqs)] == 31
    for prompt, tokens in zip(prompts, generated, strict=True):
        assert tokens == hf_greedy(hf, prompt, 32)


def left_padded(prompts: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_generate_matches_hf_generate_with_left_padding(compiled_dir, tiny_checkpoint):
    model = AutoModelForCausalLM.from_pretrained(compiled_dir)
    hf = hf_model(tiny_checkpoint)
    ids, mask = left_padded(random_prompts([30, 12, 57], model.config.vocab_size, seed=7), model.config.pad_token_id)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=32)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False)
    assert torch.equal(ours, expected)


def test_generate_stops_at_eos_and_pads_like_hf(qwen3_compiled, qwen3_checkpoint):
    hf = hf_model(qwen3_checkpoint)
    ids, mask = left_padded(random_prompts([20, 33], qwen3_compiled.config.vocab_size, seed=3), 0)
    full = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None)
    eos = int(full[0, ids.shape[1] + 5])  # a token row 0 emits 6th: that row stops early, row 1 runs on
    ours = qwen3_compiled.generate(ids, attention_mask=mask, max_new_tokens=24, eos_token_id=eos, pad_token_id=0)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, expected)
    assert eos in ours[0, ids.shape[1] : ids.shape[1] + 6].tolist()


def test_generate_uses_the_checkpoints_eos_token_like_hf(tmp_path):
    """With no eos_token_id given, generate stops at the checkpoint's, as HF generate does."""
    first = build_random_checkpoint(tmp_path / "a")
    prompt = torch.tensor(random_prompts([15], 512, seed=5))
    tokens = hf_model(first).generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)[0, 15:]
    # The same weights (same seed) with an eos the greedy output reaches at its 4th new token.
    checkpoint = build_random_checkpoint(tmp_path / "b", eos_token_id=int(tokens[3]))
    model = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, compiler="eager", max_seq_len=64)
    ours = model.generate(prompt, max_new_tokens=20)
    assert torch.equal(ours, hf_model(checkpoint).generate(prompt, max_new_tokens=20, do_sample=False))
    assert ours.shape[1] < 15 + 20


def test_bfloat16_logits_are_close_to_float32(tmp_path):
    checkpoint = build_random_checkpoint(tmp_path / "checkpoint")
    options = dict(batch_size=2, max_seq_len=64, decoder_batch_sizes=[2, 1], prefill_chunk_size=16, compiler="eager",
                   kvcache_block_size=64)  # one block per sequence: the tables below are one block each
    fp32 = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, **options)
    bf16 = AutoModelForCausalLM.from_pretrained(checkpoint, export=True, dtype="bfloat16", **options)
    bf16.save_pretrained(tmp_path / "bf16")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")
    assert loaded.rbln_config.dtype == "bfloat16"
    assert loaded.kv_cache.tensor.dtype == torch.bfloat16

    prompts = random_prompts([21, 40], 512)

    def prefill_and_decode_logits(model):
        logits = [model.prefill(p, [1 + i]).logits for i, p in enumerate(prompts)]
        return logits + list(model.decode([1, 2], [21, 40], [[1], [2]]))

    expected = prefill_and_decode_logits(fp32)
    for model in (bf16, loaded):
        for ours, want in zip(prefill_and_decode_logits(model), expected, strict=True):
            assert ours.dtype == torch.float32
            assert (ours - want).abs().max().item() <= 0.05 * want.abs().max().item()
            assert not torch.equal(ours, want)  # it really ran in bfloat16
