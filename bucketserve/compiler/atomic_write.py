"""Writing a compiled directory as a whole or not at all: into a temporary sibling, then renamed into place.

A save that fails part-way (a full disk, Ctrl-C, a failed copy) leaves the old directory, if there was one,
exactly as it was, and no half-written directory whose manifest loading would then blame on a recompile.
"""
from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path


def write_directory(target: Path, fill: Callable[[Path], None]) -> None:
    """fill(staging) writes the new directory's contents; staging becomes `target` once fill returns. The
    sibling lives in target's parent, so the rename stays on one file system."""
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "partial")
    staging.mkdir()  # with the umask's permissions, as a plain mkdir of target would have
    try:
        fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        os.rename(staging, target)
        return
    # POSIX renames cannot swap two directories: move the old one aside, the new one in, then drop the old.
    old = _sibling(target, "old")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _sibling(target: Path, role: str) -> Path:
    return target.parent / f".{target.name}.{role}-{secrets.token_hex(4)}"
