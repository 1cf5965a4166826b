"""HF-style `model.generate` (greedy) over the compiled model's prefill/decode API, for up to batch_size prompts.

Not the engine's loop (LLMEngine.step), on purpose: this is transformers' contract, which the seed's scripts
call — ids in, one padded id tensor out, the caller's eos_token_id / pad_token_id, no tokenizer (the engine's
stop checks run through a detokenizer), a fixed block table per row and no scheduler. What it shares with the
engine is everything below the loop: model.prefill / model.decode are the same executor calls the engine makes,
so a decode step here reaches the same graph through the same executor."""
from __future__ import annotations

import torch


def greedy_generate(model, input_ids, max_new_tokens, attention_mask=None, eos_token_id=None, pad_token_id=None):
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    mask = torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask, dtype=torch.long)
    config = model.compile_config
    batch = ids.shape[0]
    if batch > config.batch_size:
        raise ValueError(f"generate got {batch} prompts; this model was compiled for batch_size {config.batch_size}")
    blocks = config.blocks_per_sequence
    if batch * blocks + 1 > config.kvcache_num_blocks:
        raise ValueError(
            f"generate needs {batch * blocks + 1} KV blocks for {batch} full-length sequences; "
            f"the model has kvcache_num_blocks {config.kvcache_num_blocks}"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    prompts = [row[row_mask.bool()].tolist() for row, row_mask in zip(ids, mask, strict=True)]
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > config.max_seq_len:
        raise ValueError(
            f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds max_seq_len {config.max_seq_len}"
        )
    # Like HF generate: without explicit ids, stop and pad with the checkpoint's generation config.
    if eos_token_id is None:
        eos_token_id = model.generation_config.eos_token_id
    if pad_token_id is None:
        pad_token_id = model.generation_config.pad_token_id
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    # Block 0 is the reserved padding block; row i owns blocks 1 + i*blocks ... (i+1)*blocks.
    tables = [list(range(1 + i * blocks, 1 + (i + 1) * blocks)) for i in range(batch)]
    generated = [[] for _ in range(batch)]
    if max_new_tokens == 0:
        return ids
    for i, prompt in enumerate(prompts):
        generated[i].append(int(model.prefill(prompt, tables[i]).logits.argmax()))
    for _ in range(max_new_tokens - 1):
        live = [i for i in range(batch) if generated[i][-1] not in eos]
        if not live:
            break
        logits = model.decode(
            [generated[i][-1] for i in live],
            [len(prompts[i]) + len(generated[i]) - 1 for i in live],
            [tables[i] for i in live],
        )
        for row, i in enumerate(live):
            generated[i].append(int(logits[row].argmax()))
    width = max(len(g) for g in generated)
    new = torch.tensor([g + [pad] * (width - len(g)) for g in generated], dtype=torch.long)
    return torch.cat([ids, new], dim=1)
