"""The CPU kernel library: built for this machine's vector ISA the first time a compile needs it, copied
into every compiled directory whose graphs call it, and loaded from there before those graphs.

Building takes a C++ compiler (AOTInductor needs one to compile anyway) and about half a minute, once per
machine and source version: torch.utils.cpp_extension keeps the result in its build root. A machine that
only loads a compiled directory needs no compiler: the library travels inside the directory.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

LIBRARY_FILE = "bucketserve_kernels.so"  # its name inside a compiled directory's graphs/
SOURCES = [Path(__file__).with_name(name) for name in ("paged_attention.cpp", "blocked_linear.cpp", "quantized_linear.cpp",
                                                      "int8_activation_linear.cpp", "kquant_linear.cpp")]
HEADERS = [Path(__file__).with_name(name) for name in ("gemm_micro_kernel.h", "packed_weight.h")]  # included by SOURCES


OPS = ("paged_decode_attention", "blocked_linear", "quantized_linear", "int8_activation_linear", "kquant_linear")


def registered_ops() -> list[str]:
    """Those of OPS this process has: all, or none, unless an older library (fewer ops) was loaded."""
    return [op for op in OPS if hasattr(torch.ops.bucketserve, op)]


def registered() -> bool:
    return len(registered_ops()) == len(OPS)


def vector_floats() -> int:
    """Floats in one of the library's vectors (at::vec::Vectorized<float>), built for Inductor's ISA."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    return isa.nelements(torch.float32) if isa else 8  # without an ISA, at::vec's plain 32-byte vector


@functools.cache
def gemm_block_n() -> int | None:
    """Output rows per weight block for the GEMM kernel (blocked_linear.cpp) on this machine: 3 vectors, where
    vectors hold 16 floats (AVX-512: 8 rows x 3 vectors of accumulators fit its 32 registers, with room for
    the weights). None elsewhere, or where the library does not build: decoders keep Inductor's template."""
    if vector_floats() != 16 or build() is None:
        return None
    return 3 * vector_floats()


def build_flags() -> list[str]:
    """Compiler flags for the library: the ISA Inductor compiles its own kernels for, its flags and macros."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    flags = ["-O3", *isa.build_arch_flags().split(), *(f"-D{macro}" for macro in isa.build_macro())] if isa else ["-O3"]
    if sys.platform == "linux":
        flags.append("-march=native")  # as Inductor on Linux: the library is built where it is first used
    if "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is a header template: without -fopenmp its loop runs on one thread. GOMP's
        # symbols come from torch's own OpenMP runtime, already loaded into the process.
        flags.append("-fopenmp")
    return flags


@functools.cache
def build() -> Path | None:
    """This machine's library, built if need be and loaded into the process; None (logged) where it cannot
    be built, and the graphs then keep Inductor's own attention loops and GEMM template."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch.utils import cpp_extension

    if registered_ops():
        # A compiled directory's copy is loaded (load_from). Loading a second library that registers the
        # same namespace aborts the process, so build this one in a child process and keep the ops we have.
        if not registered():
            raise _older_library_error("compile a model")
        return _build_in_child_process()
    isa = pick_vec_isa()
    try:
        name = "bucketserve_kernels_" + (re.sub(r"\W+", "_", str(isa)) if isa else "scalar")
        path = cpp_extension.load(name, [str(s) for s in SOURCES],
                                  extra_cflags=[*build_flags(), _headers_version()], is_python_module=False)
    except (OSError, RuntimeError, SystemExit) as error:  # no compiler, no ninja, or a failed build
        logger.warning("the CPU kernels could not be built (%s); decoders use Inductor's loops and GEMM template", error)
        return None
    _register_fake()
    return Path(path)


def _headers_version() -> str:
    """A macro holding the headers' digest: cpp_extension rebuilds when a source's text or a flag changes, and
    would not see a change to a header alone."""
    digest = hashlib.sha256(b"".join(header.read_bytes() for header in HEADERS)).hexdigest()[:16]
    return f"-DBUCKETSERVE_HEADERS_VERSION={digest}"


def _build_in_child_process() -> Path | None:
    """build() in a fresh interpreter, which has no library loaded: the path it printed, or None."""
    script = "from bucketserve.kernels import library; print(library.build())"
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    printed = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else "None"
    if child.returncode != 0 or printed == "None":
        logger.warning("the CPU kernels could not be built in a child process (%s); decoders use Inductor's "
                       "loops and GEMM template", child.stderr.strip()[-500:] or "no library")
        return None
    return Path(printed)


def _older_library_error(doing: str) -> RuntimeError:
    """Where an older library, with fewer ops, is loaded: the rest cannot be added to the process."""
    missing = [op for op in OPS if op not in registered_ops()]
    return RuntimeError(
        f"this process loaded an older bucketserve kernel library (from a directory compiled by an earlier "
        f"version) that lacks {', '.join(missing)}; to {doing}, use a new Python process")


def copy_into(graphs_dir: Path) -> None:
    """Put the built library beside graphs that call it (build() must have succeeded)."""
    shutil.copyfile(build(), graphs_dir / LIBRARY_FILE)


def load_from(graphs_dir: Path) -> None:
    """Register the kernels a directory's graphs call, from its own copy, unless this process has them."""
    library = graphs_dir / LIBRARY_FILE
    if not library.is_file() or registered():
        return
    if registered_ops():  # loading a second library that registers the namespace would abort the process
        raise _older_library_error(f"load {graphs_dir.parent}")
    torch.ops.load_library(str(library))
    _register_fake()


@functools.cache
def _register_fake() -> None:
    """Shapes for torch.export, which traces the op without running it."""

    @torch.library.register_fake("bucketserve::paged_decode_attention")
    def _(query, kv_cache, layer, block_tables, positions, block_size):
        return torch.empty_like(query)

    @torch.library.register_fake("bucketserve::blocked_linear")
    def _(x, weight_blocks, n):
        return x.new_empty(*x.shape[:-1], n)

    @torch.library.register_fake("bucketserve::quantized_linear")
    def _(x, qweight, scales, mins, n, k):
        return x.new_empty(*x.shape[:-1], n)

    @torch.library.register_fake("bucketserve::int8_activation_linear")
    def _(x, qweight, scales, mins, n, k, isa="auto"):
        return x.new_empty(*x.shape[:-1], n)

    @torch.library.register_fake("bucketserve::kquant_linear")
    def _(x, qweight, qhigh, scales, mins, n, k):
        return x.new_empty(*x.shape[:-1], n)
