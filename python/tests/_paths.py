"""Shared by the tests: the package on sys.path, the repository root, the C compiler, and the
library named by S2LORA_LIBRARY (the tests that need it say why they skip)."""
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON_DIR = os.path.dirname(HERE)
REPO = os.path.dirname(PYTHON_DIR)
HEADER = os.path.join(REPO, "runtime", "api", "s2lora.h")

if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


def c_compiler():
    """$CC or cc, when on PATH; None otherwise."""
    return shutil.which(os.environ.get("CC", "cc"))


def library():
    """The path in S2LORA_LIBRARY when it names a file, else None."""
    p = os.environ.get("S2LORA_LIBRARY")
    return p if p and os.path.isfile(p) else None


_told = set()


def no_library_reason(suite):
    """Why the library's tests skip, printed once a suite (unittest prints skip reasons only
    with -v)."""
    p = os.environ.get("S2LORA_LIBRARY")
    why = ("S2LORA_LIBRARY is not set" if not p else f"S2LORA_LIBRARY={p} is not a file")
    msg = f"{why}: the tests that load libs2lora.so are skipped"
    if suite not in _told:
        _told.add(suite)
        print(f"{suite}: {msg}", file=sys.stderr)
    return msg


def needs_library(suite):
    """A class decorator: skip (saying why, once) when S2LORA_LIBRARY names no file."""
    import unittest
    if library():
        return lambda cls: cls
    return unittest.skip(no_library_reason(suite))


def binary():
    """The s2lora binary: $S2LORA_BIN when it names a file, else the one beside the library in
    S2LORA_LIBRARY (build/ holds both); None otherwise."""
    p = os.environ.get("S2LORA_BIN")
    if p:
        return p if os.path.isfile(p) else None
    lib = library()
    b = os.path.join(os.path.dirname(os.path.abspath(lib)), "s2lora") if lib else None
    return b if b and os.path.isfile(b) else None
