"""Writing a Hugging Face Llama-family checkpoint as a GGUF file, with gguf-py's writer and quantizer.

For the tests (tiny random checkpoints in every family and tensor type) and the benchmark (the same weights
for llama.cpp). Tensors are named and laid out as llama.cpp's convert_hf_to_gguf writes them: llama's q and
k rows permuted (llama.cpp rotates adjacent pairs, transformers the two halves of each head), 2-D weights in
the chosen type, norms and biases in F32.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .base import QuantizedBlocks
from .gguf_names import gguf_row_order, gguf_to_hf_names
from .safetensors_checkpoint import map_safetensors, read_hf_config

# model_type -> GGUF architecture; llama.cpp writes Mistral as llama (transformers tells them apart by the name).
ARCHITECTURE_OF = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_UNUSED = 1, 3, 5


def write_gguf(checkpoint: Path, path: Path, weight_type: str = "F32",
               tensor_types: Mapping[str, str | QuantizedBlocks] | None = None) -> Path:
    """checkpoint (a safetensors directory with a byte-level BPE tokenizer.json) as the GGUF file `path`.

    weight_type: the GGML type of every 2-D weight ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0",
    "Q5_1": what gguf-py can quantize). tensor_types: per Hugging Face name, another type, or blocks to store
    as they are (in Hugging Face row order; for types gguf-py cannot make, such as the K-quants).
    """
    import gguf

    config = read_hf_config(checkpoint)
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURE_OF:
        raise ValueError(f"write_gguf converts {', '.join(ARCHITECTURE_OF)} checkpoints; {checkpoint} is {model_type!r}")
    architecture = ARCHITECTURE_OF[model_type]
    writer = gguf.GGUFWriter(str(path), architecture)
    _write_config(writer, config, model_type)
    _write_tokenizer(writer, checkpoint, config)
    names = {hf: name for name, hf in gguf_to_hf_names(architecture, config["num_hidden_layers"]).items()}
    heads = {"q_proj": config["num_attention_heads"],
             "k_proj": config.get("num_key_value_heads") or config["num_attention_heads"]}
    overrides = dict(tensor_types or {})
    for hf_name, tensor in sorted(map_safetensors(checkpoint).tensors.items()):
        if hf_name not in names:
            continue
        stored = overrides.pop(hf_name, weight_type if tensor.dim() == 2 else "F32")
        rows = None
        if architecture == "llama":
            rows = next((gguf_row_order(tensor.shape[0], h) for p, h in heads.items() if f".{p}." in hf_name), None)
        _add_tensor(writer, names[hf_name], tensor, stored, rows)
    if overrides:
        raise ValueError(f"tensor_types names tensors the checkpoint lacks: {sorted(overrides)[:5]}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tensor(writer, name: str, tensor: torch.Tensor, stored: str | QuantizedBlocks, rows: torch.Tensor | None) -> None:
    import gguf

    if isinstance(stored, QuantizedBlocks):
        data = stored.data if rows is None else stored.data[rows]
        writer.add_tensor(name, np.ascontiguousarray(data.numpy()), raw_dtype=gguf.GGMLQuantizationType[stored.type_name])
        return
    values = tensor.float() if rows is None else tensor.float()[rows]
    values = np.ascontiguousarray(values.numpy())
    if stored == "F32":
        writer.add_tensor(name, values)
    elif stored == "F16":
        writer.add_tensor(name, values.astype(np.float16))
    else:
        qtype = gguf.GGMLQuantizationType[stored]
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)  # its bytes: shape from them


def _write_config(writer, config: dict, model_type: str) -> None:
    import gguf

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    if model_type == "mistral":
        writer.add_name("mistral")  # what transformers reads a llama-architecture file as Mistral by
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    rope = config.get("rope_parameters") or {}
    writer.add_rope_freq_base(rope.get("rope_theta", config.get("rope_theta", 10000.0)))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config["vocab_size"])


def _write_tokenizer(writer, checkpoint: Path, config: dict) -> None:
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    by_id = {index: token for token, index in tokenizer["model"]["vocab"].items()}
    special = {entry["id"]: entry["content"] for entry in tokenizer.get("added_tokens", [])}
    by_id.update(special)
    tokens, types = [], []
    for index in range(config["vocab_size"]):  # the model's vocabulary may be larger than the tokenizer's: pad it
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        types.append(TOKEN_CONTROL if index in special else TOKEN_NORMAL if index in by_id else TOKEN_UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("pad_token_id", writer.add_pad_token_id)):
        if isinstance(config.get(key), int):
            add(config[key])
    writer.add_add_bos_token(False)
    tokenizer_config = checkpoint / "tokenizer_config.json"
    template = json.loads(tokenizer_config.read_text()).get("chat_template") if tokenizer_config.is_file() else None
    if template:
        writer.add_chat_template(template)


def requantize_gguf(source: Path, path: Path, weight_type: str) -> Path:
    """The GGUF file `source` with every 2-D weight re-encoded as weight_type (through its float values), the rest
    (metadata, tokenizer, norms) as it is: e.g. llama.cpp's Q8_0 and Q4_0 of the same model, for the benchmark."""
    import gguf

    reader = gguf.GGUFReader(source)
    architecture = str(reader.fields["general.architecture"].contents())
    writer = gguf.GGUFWriter(str(path), architecture)
    copy_metadata(reader, writer, skip=("general.file_type",))
    qtype = gguf.GGMLQuantizationType[weight_type]
    for tensor in reader.tensors:
        if len(tensor.shape) != 2 or tensor.tensor_type == qtype:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
            continue
        values = gguf.dequantize(tensor.data, tensor.tensor_type)  # rows stay in the file's order
        if weight_type == "F32":
            writer.add_tensor(tensor.name, np.ascontiguousarray(values, dtype=np.float32))
        else:
            writer.add_tensor(tensor.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def copy_metadata(reader, writer, prefixes: tuple[str, ...] = ("",), skip: tuple[str, ...] = ()) -> None:
    """Copy the key-value metadata of an open GGUF file (the keys starting with one of prefixes) into a writer;
    the file's own header fields and its architecture, which the writer writes itself, are left out."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", *skip):
            continue
        if not field.name.startswith(prefixes):
            continue
        array = field.types[0] == gguf.GGUFValueType.ARRAY
        writer.add_key_value(field.name, field.contents(), field.types[0], field.types[-1] if array else None)
