"""Writing a Llama checkpoint (safetensors + byte-level BPE tokenizer) as a GGUF F32 file for llama.cpp.

Weights are copied unchanged except q_proj and k_proj, whose rows are permuted: Hugging Face rotates the
two halves of each head, llama.cpp's llama architecture rotates adjacent pairs (as convert_hf_to_gguf does).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..models.checkpoint import map_safetensors, read_hf_config

LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


def _rotary_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensor_name(hf_name: str) -> str | None:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    parts = hf_name.split(".", 3)  # model.layers.{i}.{rest}
    if len(parts) == 4 and parts[1] == "layers" and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    return None


def _vocabulary(checkpoint: Path, vocab_size: int) -> tuple[list[str], list[int], list[str], set[int]]:
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    by_id = {index: token for token, index in tokenizer["model"]["vocab"].items()}
    special = {entry["id"]: entry["content"] for entry in tokenizer.get("added_tokens", [])}
    by_id.update(special)
    tokens, types = [], []
    for index in range(vocab_size):  # the model's vocabulary may be larger than the tokenizer's: pad it
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        types.append(TOKEN_CONTROL if index in special else TOKEN_NORMAL if index in by_id else TOKEN_UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    return tokens, types, merges, set(special)


def write_gguf(checkpoint: Path, path: Path) -> Path:
    import gguf

    config = read_hf_config(checkpoint)
    if config.get("model_type") != "llama":
        raise ValueError(f"write_gguf converts llama checkpoints; {checkpoint} is {config.get('model_type')!r}")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta", 10000.0))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config["vocab_size"])
    tokens, types, merges, _ = _vocabulary(checkpoint, config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    if config.get("eos_token_id") is not None:
        writer.add_eos_token_id(config["eos_token_id"])
    if config.get("pad_token_id") is not None:
        writer.add_pad_token_id(config["pad_token_id"])
    writer.add_add_bos_token(False)
    for name, tensor in map_safetensors(checkpoint).tensors.items():
        target = gguf_tensor_name(name)
        if target is None:
            continue
        data = tensor.float().numpy()
        if name.endswith("q_proj.weight"):
            data = _rotary_permute(data, heads)
        elif name.endswith("k_proj.weight"):
            data = _rotary_permute(data, kv_heads)
        writer.add_tensor(target, np.ascontiguousarray(data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
