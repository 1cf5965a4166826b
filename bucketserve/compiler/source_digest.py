"""A digest of the code that writes a compiled directory, for caches of compiled directories: every file whose
code is traced into a graph (models/, quantization/'s modules and GEMM, compiler/, kernels/) and the code that
makes the weights the directory stores (checkpoints/ reads them, runtime/weights.py transforms them).

A cached directory keyed by it is recompiled when that code changes instead of running stale graphs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
GRAPH_SOURCES = ("models", "quantization", "compiler", "kernels", "checkpoints", "config.py", "runtime/weights.py")
SOURCE_SUFFIXES = (".py", ".cpp", ".h")


def source_files(package_dir: Path = PACKAGE_DIR) -> list[Path]:
    files = []
    for name in GRAPH_SOURCES:
        path = package_dir / name
        found = [path] if path.is_file() else path.rglob("*")
        files += sorted(p for p in found if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts)
    return files


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    digest = hashlib.sha256()
    for path in source_files(package_dir):
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
