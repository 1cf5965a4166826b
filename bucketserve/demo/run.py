"""`bucketserve demo`: build (once, cached) a small random Llama, compile it with decoders [8, 4, 1], and run
the seed page's three conversation groups, showing which decoder each group ran on and its step time."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..compiler.source_digest import source_digest
from .checkpoint import build_random_checkpoint
from .prompts import CONVERSATION_GROUPS

COMPILE_OPTIONS = dict(batch_size=8, max_seq_len=512, decoder_batch_sizes=[8, 4, 1], prefill_chunk_size=64)
MAX_TOKENS = 32
# What prepare() writes under its cache dir, and all that a rebuild removes.
CHECKPOINT, COMPILED, STAMP = "checkpoint", "compiled", "options.json"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bucketserve" / "demo"


def remove_built(cache_dir: Path) -> None:
    """Remove what prepare() writes, and only that: --cache-dir may name a folder holding other things."""
    (cache_dir / STAMP).unlink(missing_ok=True)
    for built in (CHECKPOINT, COMPILED):
        shutil.rmtree(cache_dir / built, ignore_errors=True)


def prepare(cache_dir: Path, recompile: bool = False) -> Path:
    """The compiled demo directory, built and compiled on first use and reused afterwards."""
    from ..compiler.manifest import CompiledModelError, verify_manifest
    from ..modeling import LlamaForCausalLM

    checkpoint, compiled, stamp = cache_dir / CHECKPOINT, cache_dir / COMPILED, cache_dir / STAMP
    # Keyed by the model code too: graphs compiled from older code are rebuilt, never run stale.
    wanted = json.dumps({**COMPILE_OPTIONS, "source": source_digest()}, sort_keys=True)
    if not recompile and compiled.is_dir() and stamp.is_file() and stamp.read_text() == wanted:
        try:
            verify_manifest(compiled, check_hashes=False)
            return compiled
        except CompiledModelError as err:
            print(f"cached demo model unusable ({err}); rebuilding")
    remove_built(cache_dir)
    print(f"building a small random-weight Llama in {checkpoint} ...")
    build_random_checkpoint(checkpoint, shape="demo", model_type="llama")
    print(f"compiling it with {COMPILE_OPTIONS} (once; cached in {compiled}) ...")
    model = LlamaForCausalLM.from_pretrained(checkpoint, export=True, **COMPILE_OPTIONS)
    model.save_pretrained(compiled)
    for name, seconds in model.manifest["compile_seconds"].items():
        print(f"  compiled {name} in {seconds:.1f} s")
    stamp.write_text(wanted)
    return compiled


def run_demo(cache_dir: str | None = None, recompile: bool = False) -> dict:
    from transformers import AutoTokenizer

    from ..engine.sampling_params import SamplingParams
    from ..entrypoints.llm import LLM

    compiled = prepare(Path(cache_dir) if cache_dir else default_cache_dir(), recompile)
    print("\nNOTE: the demo model has RANDOM weights: the generated text means nothing. What the demo shows is\n"
          "which compiled decoder each group of requests runs on, and how long a decode step takes.\n")
    # The seed's script, with only the import and the device changed.
    llm = LLM(model=str(compiled), device="cpu", max_num_seqs=8, max_num_batched_tokens=512, max_model_len=512, block_size=512)
    tokenizer = AutoTokenizer.from_pretrained(compiled)
    params = SamplingParams(temperature=0.0, skip_special_tokens=True, stop_token_ids=[tokenizer.eos_token_id],
                            max_tokens=MAX_TOKENS, ignore_eos=True)
    summary = {}
    for name, conversations in CONVERSATION_GROUPS.items():
        chats = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
        before = llm.get_stats()["decode_steps_per_decoder"]
        started = time.perf_counter()
        outputs = llm.generate(chats, params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        after = llm.get_stats()["decode_steps_per_decoder"]
        ran = {b: after[b] - before[b] for b in after if after[b] != before[b]}
        print(f"== {name} batch: {len(conversations)} conversation(s) ==")
        for out in outputs:
            print(f"Prompt: {out.prompt!r}, Generated text: {out.outputs[0].text!r}")
        steps = sum(ran.values())
        print("decoder(s) run: " + ", ".join(f"decoder_batch_{b} x {n} steps" for b, n in sorted(ran.items(), reverse=True))
              + f"; {elapsed:.2f} s in all, {1000 * elapsed / max(steps, 1):.1f} ms per decode step (prefill time included)\n")
        summary[name] = {"requests": len(conversations), "decode_steps_per_decoder": ran, "seconds": elapsed}
    return summary
