"""Compiling a checkpoint into a self-contained directory: graphs, weights once, manifest, config, tokenizer."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..config import CompileConfig
from ..models.checkpoint import SINGLE_FILE
from ..models.llama import LlamaForCausalLM
from ..runtime.kv_cache import KVCache
from ..runtime.model_runner import GRAPHS_DIR
from ..runtime.weights import weights_to_save
from . import aoti
from .graph_specs import graph_specs
from .manifest import write_manifest

logger = logging.getLogger(__name__)

# Files a Hugging Face checkpoint keeps beside its weights that tokenizers and generation need.
COPIED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def build_compiled_directory(
    source_dir: Path, out_dir: Path, model: LlamaForCausalLM, compile_config: CompileConfig
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, out_dir / name)
    if not (out_dir / "generation_config.json").is_file():
        _write_generation_config(out_dir)
    save_file(weights_to_save(model), str(out_dir / SINGLE_FILE), metadata={"format": "pt"})

    compile_seconds: dict[str, float] = {}
    if compile_config.compiler == "aoti":
        (out_dir / GRAPHS_DIR).mkdir(exist_ok=True)
        # A cache to trace against; graphs take the runtime's own cache as an input later.
        kv_cache = KVCache(model.config, compile_config, torch.device(compile_config.device)).tensor
        specs = graph_specs(model, compile_config, kv_cache)
        with tqdm(specs, desc="compiling graphs", unit="graph") as bar:
            for spec in bar:
                bar.set_postfix_str(spec.name)
                started = time.perf_counter()
                aoti.compile_graph(spec, out_dir / GRAPHS_DIR / f"{spec.name}.pt2")
                compile_seconds[spec.name] = round(time.perf_counter() - started, 2)
                logger.info("compiled %s in %.1f s", spec.name, compile_seconds[spec.name])
        del kv_cache
    write_manifest(out_dir, compile_config.to_dict(), model.config.to_dict(), compile_seconds)


def _write_generation_config(out_dir: Path) -> None:
    hf = json.loads((out_dir / "config.json").read_text())
    generation = {k: hf[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
