"""Architecture hyperparameters of a Llama-family checkpoint, read once from its config.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # None for plain rotary; {"rope_type": "llama3", ...} otherwise
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2 always, Llama/Qwen3 with attention_bias)
    o_bias: bool  # o_proj carries a bias (Llama/Qwen3 with attention_bias; never Qwen2)
    qk_norm: bool  # RMSNorm over each head of q and k before rotary (Qwen3)
    sliding_window: int | None

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"model_type {model_type!r} is not supported; bucketserve runs {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # transformers' swish is SiLU
            raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported; only 'silu' (SwiGLU) is")
        if hf.get("mlp_bias", False):
            raise ValueError("mlp_bias=True is not supported")
        num_heads = hf["num_attention_heads"]
        # transformers 5 writes rope settings as `rope_parameters`; 4.x as `rope_theta` + `rope_scaling`.
        rope = dict(hf.get("rope_parameters") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        if not rope and hf.get("rope_scaling"):
            rope = dict(hf["rope_scaling"])
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ValueError(f"rope_type {rope_type!r} is not supported; bucketserve runs 'default' and 'llama3'")
        if rope_type == "llama3":
            missing = [key for key in ("factor", "low_freq_factor", "high_freq_factor") if key not in rope]
            if missing:
                raise ValueError(f"the llama3 rope settings lack {', '.join(missing)}")
            # As transformers: without it, the context the model was trained at is max_position_embeddings.
            rope.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings", 2048))
        sliding_window = hf.get("sliding_window")
        if model_type in ("qwen2", "qwen3") and not _qwen_slides(hf):
            sliding_window = None  # Qwen configs carry a window they do not use unless asked to
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=num_heads,
            num_key_value_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=dict(rope, rope_type=rope_type) if rope_type != "default" else None,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
            o_bias=model_type != "qwen2" and bool(hf.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_window=sliding_window,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**d)


def _qwen_slides(hf: dict[str, Any]) -> bool:
    """Whether any layer of a Qwen2/Qwen3 checkpoint attends through its sliding window: as transformers reads
    it, its layer_types, else use_sliding_window for the layers from max_window_layers on."""
    if hf.get("layer_types"):
        return "sliding_attention" in hf["layer_types"]
    if not hf.get("use_sliding_window", False):
        return False
    return hf.get("max_window_layers", 0) < hf["num_hidden_layers"]
