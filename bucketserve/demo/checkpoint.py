"""Tiny random-weight checkpoints with a byte-level BPE tokenizer, made locally (no download).

Used by `bucketserve demo`, the benchmark and the tests: the loading code that reads them is the one real
checkpoints go through.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Shapes of the built-in models. "demo": small enough to compile in a minute on 2 cores.
# "smollm2-135m": the public SmolLM2-135M shape (random weights), for the benchmark.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "demo": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4),
    "smollm2-135m": dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        vocab_size=49152, tie_word_embeddings=True,
    ),
}


def _training_text() -> list[str]:
    from .prompts import all_prompts

    words = "the of and to in is that it for as with was on be by this are from or at an have not but what all"
    return all_prompts() + [words] * 4 + [bytes(range(32, 127)).decode()]


def build_tokenizer(directory: Path, vocab_size: int = 512) -> int:
    """Train a byte-level BPE on a little built-in text; save it HF-style. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "additional_special_tokens": ["<|im_start|>"],
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    return tokenizer.get_vocab_size()


def build_random_checkpoint(
    directory: str | Path, shape: str = "tiny", model_type: str = "llama", seed: int = 0, **config_overrides: Any
) -> Path:
    """A Hugging Face checkpoint (config, safetensors, tokenizer) with random weights, built by transformers."""
    import transformers

    directory = Path(directory)
    vocab = build_tokenizer(directory)
    eos_id = SPECIAL_TOKENS.index("<|im_end|>")
    settings: dict[str, Any] = dict(
        vocab_size=vocab, max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=SPECIAL_TOKENS.index("<|endoftext|>"),
    )
    settings.update(SHAPES[shape])
    settings.update(config_overrides)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[model_type]
    torch.manual_seed(seed)
    model = model_class(config_class(**settings))
    _spread_weights(model)
    model.save_pretrained(directory)
    return directory


@torch.no_grad()
def _spread_weights(model: torch.nn.Module) -> None:
    # HF initialises with std 0.02, which makes a tiny random model's logits nearly flat; a wider spread
    # gives distinct argmaxes, so greedy comparisons in tests actually discriminate.
    for param in model.parameters():
        if param.dim() == 2:
            param.normal_(0.0, 1.0 / param.shape[1] ** 0.5 * 2.0)
