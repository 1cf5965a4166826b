"""A digest of the code that writes graphs (models/, compiler/, kernels/), for caches of compiled directories.

A cached directory keyed by it is recompiled when the model code changes instead of running stale graphs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
GRAPH_SOURCES = ("models", "compiler", "kernels")


def source_digest() -> str:
    digest = hashlib.sha256()
    for folder in GRAPH_SOURCES:
        for path in sorted(p for p in (PACKAGE_DIR / folder).iterdir() if p.suffix in (".py", ".cpp", ".h")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
