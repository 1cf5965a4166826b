"""Opening a compiled directory's native files safely: each .pt2 package and .so library is checked whole
before torch or the dynamic loader maps it. A truncated package otherwise fails as "Failed to initialize zip
archive" naming no file, and a truncated library is mapped past its end and kills the process with SIGBUS.

These checks catch damage (a cut copy, a full disk), not a crafted file: the libraries are native code, and
loading them runs it (docs/CHECKPOINTS.md, "What a compiled directory is").
"""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
PT_LOAD = 1


class NativeFileError(RuntimeError):
    """A package or library that cannot be opened as it is; the message names the file."""


def check_native_file(path: Path) -> None:
    """Whatever path is: a .pt2 must be a whole zip archive with its members' CRCs right, a .so a whole ELF file."""
    if path.suffix == ".pt2":
        check_package(path)
    elif path.suffix == ".so":
        check_shared_library(path)


def check_package(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member: a wrong CRC or a member cut short
            has_library = any(name.endswith(".so") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise NativeFileError(f"{path} is not a whole AOTInductor package ({err}); it is truncated or damaged: "
                              "recompile the model") from err
    if bad is not None:
        raise NativeFileError(f"{path}: member {bad} is damaged (its CRC does not match); recompile the model")
    if not has_library:
        raise NativeFileError(f"{path} holds no compiled library (.so); it is not an AOTInductor package: recompile the model")


def check_shared_library(path: Path) -> None:
    """Every section and loadable segment the ELF headers name lies inside the file (64-bit little-endian,
    what torch builds on x86-64 and aarch64 Linux)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != ELF_MAGIC or header[4] != 2 or header[5] != 1:
            raise NativeFileError(f"{path} ({size} bytes) is not a 64-bit little-endian ELF library; recompile the model")
        phoff, shoff = struct.unpack_from("<QQ", header, 0x20)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 0x36)
        if phoff + phnum * phentsize > size or shoff + shnum * shentsize > size:
            raise NativeFileError(f"{path} is truncated: its ELF headers end past its {size} bytes; recompile the model")
        f.seek(phoff)
        table = f.read(phnum * phentsize)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == PT_LOAD and p_offset + p_filesz > size:
            raise NativeFileError(f"{path} is truncated: segment {i} ends at byte {p_offset + p_filesz}, the file has "
                                  f"{size}; recompile the model")
