"""Options against what was compiled: one normalizer for the user's options and a manifest's alike.

Both go through config.build_compile_config, the validator a compile runs, and are compared as normalized
configs: `decoder_batch_sizes=[1, 4, 8]` asks for the decoders (8, 4, 1) do, `kv_cache_dtype="bf16"` for
"bfloat16", `rbln_quantization={...}` for both its fields. from_pretrained(dir), LLM(...) and the server
(through LLM) call `check_options_match`; loading a manifest calls `normalized_manifest_config`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import OPTION_NAMES, CompileConfig, build_compile_config, split_rbln_aliases
from .models.config import ModelConfig

# Options a compile derives from others when they are not given (config.build_compile_config's defaults).
# Comparing, a derived option the user left out keeps its compiled value unless the user changed what it is
# derived from: batch_size=4 alone asks for the decoders and cache batch_size 4 would get, not for (8, 4, 1).
DERIVED_FROM = {  # in dependency order: kvcache_num_blocks depends on kvcache_block_size
    "decoder_batch_sizes": ("batch_size",),
    "kvcache_block_size": ("max_seq_len",),
    "kvcache_num_blocks": ("batch_size", "max_seq_len", "kvcache_block_size"),
    "prefill_chunk_size": ("max_seq_len",),
    "kv_cache_dtype": ("dtype",),
}

# vLLM's engine arguments (LLM(...), `bucketserve serve`) that are compile options under another name;
# tensor_parallel_size, dtype and device are spelled alike.
VLLM_SPELLINGS = {"max_num_seqs": "batch_size", "max_model_len": "max_seq_len"}
# vLLM's block_size is the block manager's granularity: a multiple of the compiled blocks is whole ones.
GROUPS_WHOLE_BLOCKS = "block_size"


def normalized_manifest_config(compile_config: dict[str, Any], model_config: ModelConfig) -> CompileConfig:
    """A manifest's compile_config through the compile-time validator. Raises ValueError naming the field where
    it is not one a compile could have written (a wrong type, an inconsistent value, a field renormalized)."""
    if not isinstance(compile_config, dict):
        raise ValueError(f"compile_config is {type(compile_config).__name__}, not an object of compile options")
    unknown = sorted(set(compile_config) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(f"compile_config has unknown field(s) {', '.join(unknown)}")
    missing = sorted(set(OPTION_NAMES) - set(compile_config))
    if missing:
        raise ValueError(f"compile_config lacks field(s) {', '.join(missing)}")
    # device as recorded: whether this machine has it is for loading to find out, with its own message.
    normalized = build_compile_config(dict(compile_config), model_config, check_device=False)
    recorded = normalized.to_dict()
    for name in OPTION_NAMES:
        value = compile_config[name]
        if name == "kv_cache_dtype" and value == "auto":  # what older compiles wrote: the model's dtype
            continue
        if value != recorded[name] or type(value) is not type(recorded[name]):
            raise ValueError(f"compile_config.{name} is {value!r}, which a compile normalizes to {recorded[name]!r}")
    return normalized


def check_options_match(options: dict[str, Any], compiled: CompileConfig, model_config: ModelConfig,
                        directory: str | Path) -> None:
    """Raise ValueError naming the first option (as the user spelled it) whose normalized value differs from what
    `directory` was compiled with. options: compile options (rbln_ aliases allowed) or vLLM's engine arguments
    (VLLM_SPELLINGS); "auto" for dtype and device means "as compiled". None is a value as a compile reads it
    (quantization=None: float weights); leave an option out to take what was compiled."""
    spelled: dict[str, str] = {}
    plain: dict[str, Any] = {}
    compile_options = {}
    for name, value in options.items():
        if name in ("dtype", "device") and value == "auto":
            continue
        if name == GROUPS_WHOLE_BLOCKS:
            _check_whole_blocks(value, compiled.kvcache_block_size)
        elif name in VLLM_SPELLINGS:
            plain[VLLM_SPELLINGS[name]], spelled[VLLM_SPELLINGS[name]] = value, name
        else:
            compile_options[name] = value
    for name, value in split_rbln_aliases(compile_options).items():
        if name in plain:
            raise ValueError(f"option {name!r} was given twice (as {spelled[name]} and as {name}); give it once")
        plain[name], spelled[name] = value, _spelling(options, name)
    quantization = plain.get("quantization")
    if isinstance(quantization, dict) and quantization.get("kv_caches") is not None and "kv_cache_dtype" not in plain:
        spelled["kv_cache_dtype"] = spelled["quantization"]  # optimum-rbln's dict gives both fields
    base = compiled.to_dict()
    changed = {name for name, value in plain.items() if name in base and value != base[name]}
    for derived, inputs in DERIVED_FROM.items():
        if derived not in spelled and changed & set(inputs):
            del base[derived]
            changed.add(derived)
    base = {name: value for name, value in base.items() if name not in spelled}
    wanted = build_compile_config({**base, **plain}, model_config, check_device=False)
    for name in OPTION_NAMES:
        if name not in spelled or getattr(wanted, name) == getattr(compiled, name):
            continue
        given = options.get(spelled[name], plain.get(name))
        compiled_value = getattr(compiled, name)
        raise ValueError(
            f"{spelled[name]}={given!r} was given, but it differs from the compiled {name}={compiled_value!r} "
            f"({directory} was compiled with {name}={compiled_value!r}); leave the option out or pass the compiled "
            f"value, or recompile with from_pretrained(checkpoint, export=True, {name}=...)"
        )


def _spelling(options: dict[str, Any], name: str) -> str:
    """How the user wrote option `name`: as it is, rbln_-prefixed, or inside rbln_config."""
    for spelled in (name, f"rbln_{name}"):
        if spelled in options:
            return spelled
    return f"rbln_config[{name!r}]"


def _check_whole_blocks(block_size: Any, compiled_block_size: int) -> None:
    """The seed's scripts pass block_size=max_seq_len (one block per sequence), which 16-token blocks tile."""
    if isinstance(block_size, int) and not isinstance(block_size, bool) and block_size > 0 \
            and block_size % compiled_block_size == 0:
        return
    raise ValueError(
        f"block_size={block_size!r} is not a multiple of the compiled kvcache_block_size={compiled_block_size}; "
        f"pass block_size={compiled_block_size} or leave it out, or recompile with kvcache_block_size={block_size!r}"
    )
