"""Content digests of Python code: a source file, a range of its lines, a code object. One function per kind.

Everything that decides "is this the same code?" uses these: the cache key (``describe.describe_target`` hashes the
target's source files, and the code of classes that have no file), the guard re-checks (a function global is the
same function when its code digest matches), and the staleness check of inlined source ranges (sources.py).
A digest never includes a file path or a line number: a moved checkout is the same code.
"""

from __future__ import annotations

import hashlib
import types
from pathlib import Path
from typing import Protocol

__all__ = ["code_digest", "file_digest", "lines_digest"]


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


_file_cache: dict[str, tuple[int, int, str]] = {}


def file_digest(path: str) -> str | None:
    """sha256 of a file's bytes, cached per path, mtime and size (the hit path calls it); None if unreadable."""
    try:
        st = Path(path).stat()
        cached = _file_cache.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
    _file_cache[path] = (st.st_mtime_ns, st.st_size, digest)
    return digest


def lines_digest(path: str, first: int, last: int) -> str:
    """sha256 of lines ``first`` .. ``last - 1`` (1-based, line endings included) of a file."""
    lines = Path(path).read_bytes().splitlines(keepends=True)
    return hashlib.sha256(b"".join(lines[first - 1 : last - 1])).hexdigest()


def code_digest(code: types.CodeType) -> str:
    """sha256 of bytecode, names, arguments and constants, nested code included; never the file or line numbers.

    Constants are fed in a canonical form: a ``frozenset`` constant (``x in {"a", "b"}``) iterates in a
    hash-randomized order, so ``repr`` would differ between processes and a re-check would never match.
    """
    hasher = hashlib.sha256()
    _feed(hasher, code)
    return hasher.hexdigest()


def _feed(hasher: _Hasher, code: types.CodeType) -> None:
    hasher.update(code.co_code)
    names = (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, code.co_argcount)
    hasher.update(repr(names).encode())
    for const in code.co_consts:
        hasher.update(_const_token(const, hasher).encode())


def _const_token(const: object, hasher: _Hasher) -> str:
    if isinstance(const, types.CodeType):
        _feed(hasher, const)
        return "<code>"
    if isinstance(const, frozenset):
        return "frozenset(" + ",".join(sorted(_const_token(c, hasher) for c in const)) + ")"
    if isinstance(const, tuple):
        return "(" + ",".join(_const_token(c, hasher) for c in const) + ")"
    return f"{type(const).__name__}:{const!r}"
