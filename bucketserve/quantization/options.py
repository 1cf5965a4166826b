"""The quantization options, in the spellings users know, validated into CompileConfig's two fields:

    quantization="int8" | "int4"                                  weights (None: float, the default)
    quantization="auto"                                            keep each weight in its file's type (the
                                                                   default for a GGUF whose matrices are quantized)
    kv_cache_dtype="bf16"                                          the KV cache ("auto": the model's dtype)
    rbln_quantization={"weights": "int4", "kv_caches": "bf16"}     optimum-rbln's dict, also inside rbln_config
    activations="int8" (or the dict's "activations": "int8")       activations quantized at run time (None: float)

Anything else is a ValueError naming the value and what is accepted.
"""
from __future__ import annotations

from typing import Any

SCHEME_BITS = {"int8": 8, "int4": 4}
SCHEMES = (*SCHEME_BITS, "auto")
# Spellings of the KV cache dtype -> the torch dtype name CompileConfig records.
KV_CACHE_DTYPES = {"auto": None, "float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}
RBLN_KEYS = ("weights", "kv_caches", "activations")
ACTIVATION_SCHEMES = ("int8",)  # quantization/activations.py


def weight_scheme(value: Any) -> str | None:
    if value is None or isinstance(value, str) and value in SCHEMES:
        return value
    raise ValueError(f"unknown weight quantization {value!r}; choose one of {', '.join(map(repr, SCHEMES))} "
                     "(or None for float weights)")


def kv_cache_dtype(value: Any, dtype: str) -> str:
    """The KV cache's torch dtype name; "auto" (or None) is the model's dtype."""
    value = "auto" if value is None else value
    if not isinstance(value, str) or value not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown kv_cache_dtype {value!r}; choose one of {', '.join(map(repr, KV_CACHE_DTYPES))}")
    return KV_CACHE_DTYPES[value] or dtype


def weights_given(quantization: Any) -> bool:
    """Whether options that hold `quantization` (as given: a scheme, None, or optimum-rbln's dict) name the
    weights' scheme, None included: where they do not, the checkpoint's default applies."""
    return not isinstance(quantization, dict) or "weights" in quantization


def split_quantization(quantization: Any, kv_cache: Any) -> tuple[str | None, Any]:
    """quantization as given (a scheme name, None, or optimum-rbln's dict) and kv_cache_dtype as given ->
    (weight scheme, KV cache spelling). The dict's "kv_caches" and kv_cache_dtype may both be given only alike."""
    if not isinstance(quantization, dict):
        return weight_scheme(quantization), kv_cache
    unknown = sorted(str(key) for key in quantization if key not in RBLN_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in rbln_quantization; it takes "
                         f"{', '.join(map(repr, RBLN_KEYS))}, e.g. {{'weights': 'int4', 'kv_caches': 'bf16'}}")
    dict_kv = quantization.get("kv_caches")
    if dict_kv is not None and kv_cache is not None and kv_cache_dtype(dict_kv, "") != kv_cache_dtype(kv_cache, ""):
        raise ValueError(f"the KV cache dtype was given twice, differently: rbln_quantization['kv_caches']={dict_kv!r} "
                         f"and kv_cache_dtype={kv_cache!r}; give it once")
    return weight_scheme(quantization.get("weights")), kv_cache if dict_kv is None else dict_kv


def activation_scheme(quantization: Any, activations: Any) -> str | None:
    """The activations' scheme from the dict's "activations" and/or activations= (alike if both): "int8" runs
    the projections on int8 x int8 dot products (quantization/activations.py), which needs quantized weights."""
    from_dict = quantization.get("activations") if isinstance(quantization, dict) else None
    if from_dict is not None and activations is not None and from_dict != activations:
        raise ValueError(f"the activations' quantization was given twice, differently: rbln_quantization"
                         f"['activations']={from_dict!r} and activations={activations!r}; give it once")
    value = activations if from_dict is None else from_dict
    if value is not None and value not in ACTIVATION_SCHEMES:
        raise ValueError(f"unknown activations quantization {value!r}; choose {', '.join(map(repr, ACTIVATION_SCHEMES))} "
                         "(or None for float activations, the default)")
    weights = quantization.get("weights") if isinstance(quantization, dict) else quantization
    if value is not None and weights is None:
        raise ValueError(f"activations={value!r} multiplies int8 activations by quantized weights; give "
                         "quantization='int4' or 'int8' too, e.g. rbln_quantization={'weights': 'int4', "
                         "'activations': 'int8'}")
    return value
