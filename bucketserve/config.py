"""Compile options: one dataclass, validated once at the edge (from_pretrained), then trusted inside."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from .models.config import ModelConfig
from .models.tensor_parallel import check_shardable
from .quantization.layout import GROUP
from .quantization.options import activation_scheme, kv_cache_dtype, split_quantization, weights_given

logger = logging.getLogger(__name__)

RBLN_PREFIX = "rbln_"
DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")
COMPILERS = ("aoti", "eager")


@dataclass(frozen=True)
class CompileConfig:
    batch_size: int = 1
    max_seq_len: int = 2048
    tensor_parallel_size: int = 1
    decoder_batch_sizes: tuple[int, ...] = ()  # normalized: unique, descending, holds batch_size
    kvcache_block_size: int = 0  # 0 until normalized: then default_block_size(max_seq_len) unless given
    kvcache_num_blocks: int = 0  # 0 until normalized; counts the reserved padding block
    prefill_chunk_size: int = 128
    dtype: str = "float32"
    device: str = "cpu"
    compiler: str = "aoti"  # "eager" runs the same model code uncompiled (debugging, fast tests)
    quantization: str | None = None  # weights: "int8", "int4", "auto" (as the file stores them; quantization/), None: float
    kv_cache_dtype: str = "auto"  # normalized to a torch dtype name; "auto" (older manifests): dtype
    activations: str | None = None  # "int8": quantized at run time (quantization/activations.py); None: float

    @property
    def kv_cache_torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype if self.kv_cache_dtype == "auto" else self.kv_cache_dtype)

    @property
    def blocks_per_sequence(self) -> int:
        return self.max_seq_len // self.kvcache_block_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["decoder_batch_sizes"] = list(self.decoder_batch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CompileConfig:
        return cls(**{**d, "decoder_batch_sizes": tuple(d["decoder_batch_sizes"])})


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CompileConfig))


def split_rbln_aliases(options: dict[str, Any]) -> dict[str, Any]:
    """Accept `rbln_batch_size=8` as `batch_size=8` (optimum-rbln spelling); both at once is an error."""
    plain: dict[str, Any] = {}
    spellings: dict[str, str] = {}
    for name, value in options.items():
        key = name[len(RBLN_PREFIX):] if name.startswith(RBLN_PREFIX) else name
        if key == "config" and name == "rbln_config":  # optimum-rbln's rbln_config={...} dict, or None
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError(f"rbln_config must be a dict of compile options, got {value!r}")
            for inner, inner_value in value.items():
                inner_key = inner[len(RBLN_PREFIX):] if inner.startswith(RBLN_PREFIX) else inner
                _put(plain, spellings, inner_key, inner_value, f"rbln_config[{inner!r}]")
            continue
        _put(plain, spellings, key, value, name)
    return plain


def _put(plain: dict[str, Any], spellings: dict[str, str], key: str, value: Any, spelled: str) -> None:
    if key in plain:
        raise ValueError(f"option {key!r} was given twice (as {spellings[key]} and as {spelled}); give it once")
    if key not in OPTION_NAMES:
        raise ValueError(f"unknown compile option {spelled!r}; known options: {', '.join(OPTION_NAMES)}")
    plain[key] = value
    spellings[key] = spelled


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def normalize_decoder_batch_sizes(values: Any, batch_size: int) -> tuple[int, ...]:
    if values is None:
        return (batch_size,)
    if values == "auto":  # planner/auto.py turns it into a list before this, when compiling with traffic=
        raise ValueError("decoder_batch_sizes='auto' is planned when compiling (from_pretrained(..., export=True, "
                         "traffic=...)); a compiled directory holds a list: drop the option to load it")
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"decoder_batch_sizes must be a list of integers, got {values!r}")
    sizes = [_positive_int("every value of decoder_batch_sizes", v) for v in values]
    for size in sizes:
        if size > batch_size:
            raise ValueError(
                f"decoder_batch_sizes value {size} is larger than batch_size {batch_size}; "
                f"every decoder batch size must be <= batch_size"
            )
    if batch_size not in sizes:
        logger.warning("decoder_batch_sizes %s lacks batch_size %d; adding it", sizes, batch_size)
        sizes.append(batch_size)
    return tuple(sorted(set(sizes), reverse=True))


# vLLM's block size: small enough that prompts sharing a prefix share whole blocks (the prefix cache reuses
# only full blocks), large enough to keep block tables short.
DEFAULT_BLOCK_SIZE = 16


# KV slots the cache may have: the graphs and kernels index slots with 32-bit offsets.
MAX_KV_SLOTS = 2**31 - 1


def default_block_size(max_seq_len: int) -> int:
    """DEFAULT_BLOCK_SIZE where it divides max_seq_len; otherwise one block per sequence."""
    return DEFAULT_BLOCK_SIZE if max_seq_len % DEFAULT_BLOCK_SIZE == 0 else max_seq_len


def build_compile_config(options: dict[str, Any], model_config: ModelConfig,
                         default_quantization: str | None = None, check_device: bool = True) -> CompileConfig:
    """Validate user options (rbln_ aliases allowed) against the checkpoint; return the normalized config.
    default_quantization: the weights' scheme where the options name none (the checkpoint's: "auto" for a GGUF
    whose matrices are quantized). check_device=False leaves out whether this machine has the device (options
    compared, not run)."""
    o = split_rbln_aliases(options)
    batch_size = _positive_int("batch_size", o.get("batch_size", 1))
    max_seq_len = _positive_int("max_seq_len", o.get("max_seq_len", min(2048, model_config.max_position_embeddings)))
    if max_seq_len > model_config.max_position_embeddings:
        raise ValueError(
            f"max_seq_len {max_seq_len} exceeds the checkpoint's max_position_embeddings "
            f"{model_config.max_position_embeddings}; use max_seq_len <= {model_config.max_position_embeddings}"
        )
    if model_config.sliding_window is not None and max_seq_len > model_config.sliding_window:
        raise ValueError(
            f"max_seq_len {max_seq_len} exceeds the checkpoint's sliding_window {model_config.sliding_window}; "
            f"bucketserve attends over the whole context, so use max_seq_len <= {model_config.sliding_window}"
        )
    tp = _positive_int("tensor_parallel_size", o.get("tensor_parallel_size", 1))
    scheme, kv_cache = split_quantization(o.get("quantization"), o.get("kv_cache_dtype"))
    if "quantization" not in o or not weights_given(o["quantization"]):
        scheme = default_quantization
    check_shardable(model_config, tp, quantization_group=GROUP if scheme is not None else None)
    block_size = _positive_int("kvcache_block_size", o.get("kvcache_block_size", default_block_size(max_seq_len)))
    if max_seq_len % block_size:
        raise ValueError(
            f"max_seq_len {max_seq_len} is not a multiple of kvcache_block_size {block_size}; "
            f"choose a block size that divides max_seq_len"
        )
    blocks_per_sequence = max_seq_len // block_size
    num_blocks = o.get("kvcache_num_blocks")
    if num_blocks is None:
        num_blocks = batch_size * blocks_per_sequence + 1
    num_blocks = _positive_int("kvcache_num_blocks", num_blocks)
    if num_blocks < blocks_per_sequence + 1:
        raise ValueError(
            f"kvcache_num_blocks {num_blocks} cannot hold one full sequence ({blocks_per_sequence} blocks) plus "
            f"the reserved padding block; use kvcache_num_blocks >= {blocks_per_sequence + 1}"
        )
    if num_blocks * block_size > MAX_KV_SLOTS:
        raise ValueError(
            f"kvcache_num_blocks {num_blocks} of kvcache_block_size {block_size} make {num_blocks * block_size} KV "
            f"slots, more than a cache can index ({MAX_KV_SLOTS}); use kvcache_num_blocks <= {MAX_KV_SLOTS // block_size}"
        )
    chunk = o.get("prefill_chunk_size", min(128, max_seq_len))
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= max_seq_len:
        raise ValueError(f"prefill_chunk_size must be an integer in [1, max_seq_len={max_seq_len}], got {chunk!r}")
    dtype = o.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    device = o.get("device", "cpu")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}, not supported; choose one of {', '.join(DEVICES)}")
    if device == "cuda" and check_device and not torch.cuda.is_available():
        raise ValueError(f"device 'cuda' was asked for, but this torch ({torch.__version__}) sees no CUDA device; "
                         "compile with device='cpu', or on a machine with a GPU and a CUDA build of torch")
    compiler = o.get("compiler", "aoti")
    if compiler not in COMPILERS:
        raise ValueError(f"unknown compiler {compiler!r}; choose one of {', '.join(COMPILERS)}")
    return CompileConfig(
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        tensor_parallel_size=tp,
        decoder_batch_sizes=normalize_decoder_batch_sizes(o.get("decoder_batch_sizes"), batch_size),
        kvcache_block_size=block_size,
        kvcache_num_blocks=num_blocks,
        prefill_chunk_size=chunk,
        dtype=dtype,
        device=device,
        compiler=compiler,
        quantization=scheme,
        kv_cache_dtype=kv_cache_dtype(kv_cache, dtype),
        activations=activation_scheme(o.get("quantization"), o.get("activations")),
    )
