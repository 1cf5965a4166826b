"""llama.cpp's own quantizer (ggml-quants.c's quantize_q4_K, ... : the functions llama-quantize calls per
tensor), built from the llama-cpp-python sdist into a small shared library and called through ctypes, so the
tests' K-quant blocks are made by llama.cpp, never by hand, without building all of llama.cpp.

The sdist comes from $BUCKETSERVE_LLAMA_CPP_SDIST (a path to the .tar.gz) where set, else from the cache,
else `pip download` (PyPI, which CI reaches). Only ggml's quantizer sources are unpacked; the four ggml
functions they call that live elsewhere in ggml (row sizes, type names, the abort) are given by STUBS below,
with the block sizes gguf-py knows. The built library is cached under ~/.cache/bucketserve/ggml-quants.
Where none of this can be done, unavailable_reason() says why (the tests skip with it).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from bucketserve.checkpoints.base import QuantizedBlocks

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
GGML = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/ggml/"
SOURCES = ("src/ggml-quants.c", "src/ggml-quants.h", "src/ggml-common.h", "src/ggml-impl.h",
           "src/ggml-cpu/ggml-cpu-impl.h", "include/")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bucketserve" / "ggml-quants"
# GGML type -> quantize function; each takes (src, dst, nrow, n_per_row, imatrix) and returns bytes written.
FUNCTIONS = {"Q4_K": "quantize_q4_K", "Q5_K": "quantize_q5_K", "Q6_K": "quantize_q6_K", "Q5_0": "quantize_q5_0",
             "Q5_1": "quantize_q5_1", "Q8_0": "quantize_q8_0", "Q4_0": "quantize_q4_0", "Q4_1": "quantize_q4_1"}

STUBS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdarg.h>
static const int64_t block_size[] = {%(block)s};
static const size_t type_size[] = {%(size)s};
size_t ggml_type_size(int type) { return type_size[type]; }
size_t ggml_row_size(int type, int64_t ne) { return type_size[type] * ne / block_size[type]; }
const char * ggml_type_name(int type) { return "ggml type"; }
void ggml_abort(const char * file, int line, const char * fmt, ...) {
  va_list args; va_start(args, fmt); fprintf(stderr, "ggml abort at %%s:%%d: ", file, line);
  vfprintf(stderr, fmt, args); va_end(args); fputc('\n', stderr); abort();
}
"""


def _sdist() -> Path:
    given = os.environ.get("BUCKETSERVE_LLAMA_CPP_SDIST")
    if given:
        return Path(given)
    cached = CACHE / SDIST
    if not cached.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(CACHE)], check=True, capture_output=True, timeout=600)
    return cached


def _stubs() -> str:
    import gguf

    count = max(t.value for t in gguf.GGMLQuantizationType) + 1
    block, size = [1] * count, [0] * count
    for type_, (block_size, type_size) in gguf.GGML_QUANT_SIZES.items():
        block[type_.value], size[type_.value] = block_size, type_size
    return STUBS % {"block": ", ".join(map(str, block)), "size": ", ".join(map(str, size))}


def _build() -> Path:
    sdist = _sdist()
    stubs = _stubs()
    key = hashlib.sha256(f"{sdist.name}{sdist.stat().st_size}{stubs}".encode()).hexdigest()[:12]
    library = CACHE / f"libggml_quants_{key}.so"
    if library.is_file():
        return library
    work = CACHE / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(tuple(GGML + s for s in SOURCES))]
        archive.extractall(work, members=members, filter="data")
    ggml = work / GGML
    (work / "stubs.c").write_text(stubs)
    command = [os.environ.get("CC", "cc"), "-O2", "-fPIC", "-shared", "-std=c11", f"-I{ggml / 'include'}",
               f"-I{ggml / 'src'}", f"-I{ggml / 'src' / 'ggml-cpu'}", str(ggml / "src" / "ggml-quants.c"),
               str(work / "stubs.c"), "-lm", "-o", str(library)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    shutil.rmtree(work, ignore_errors=True)
    return library


@functools.cache
def _library() -> ctypes.CDLL | str:
    try:
        library = ctypes.CDLL(str(_build()))
    except (OSError, subprocess.SubprocessError, tarfile.TarError) as error:
        detail = getattr(error, "stderr", b"") or b""
        return f"llama.cpp's quantizer could not be built from the llama-cpp-python {VERSION} sdist: {error} " \
               f"{detail.decode(errors='replace')[-300:]}"
    for name in FUNCTIONS.values():
        function = getattr(library, name)
        function.restype = ctypes.c_size_t
        function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    return library


def unavailable_reason() -> str | None:
    library = _library()
    return library if isinstance(library, str) else None


def quantize(type_name: str, weight: torch.Tensor) -> QuantizedBlocks:
    """weight [n, k] quantized by llama.cpp's quantizer (no importance matrix, as llama-quantize without one)."""
    import gguf

    library = _library()
    assert not isinstance(library, str), library
    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    n, k = weight.shape
    src = np.ascontiguousarray(weight.float().numpy())
    dst = np.zeros((n, k // block_size * type_size), dtype=np.uint8)
    written = getattr(library, FUNCTIONS[type_name])(src.ctypes.data, dst.ctypes.data, n, k, None)
    assert written == dst.nbytes, (written, dst.nbytes)
    return QuantizedBlocks(type_name, (n, k), torch.from_numpy(dst))
