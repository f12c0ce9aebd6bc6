"""The identity of an install: what a memo of a source-tree hash (torch's, Triton's) is valid for.

Size, mtime, ctime and inode of every file the hash reads (a superset of its own walk), so an in-place edit, a
reinstall or an editable install changes it; a stale memo can never survive one. ``install_identity``: torch's
tree as ``torch_key()`` walks it. ``tree_identity``: every file under a package directory (Triton's: its
``triton_key()`` reads modules of four sub-trees and ``libtriton``; stat'ing all of its ~350 files is a superset
that does not depend on which). Plain file stats: no torch or triton import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.machinery
import os
from pathlib import Path

__all__ = ["MEMO_FORMAT", "InstallIdentity", "install_identity", "tree_identity"]

MEMO_FORMAT = 1
_KIND = "torchkiln-install-memo"

#: Inductor's extra hashed files, relative to ``torch/_inductor`` (``torch_key``'s ``extra_files``, 2.11 and 2.13).
_INDUCTOR_EXTRA_FILES = ("codegen/aoti_runtime/interface.cpp", "script.ld")
_SUFFIXES = tuple(sorted(set(importlib.machinery.all_suffixes()), key=len, reverse=True))


@dataclasses.dataclass(frozen=True)
class InstallIdentity:
    """What a memo is valid for: ``digest`` changes whenever a file ``torch_key`` hashes can have changed."""

    digest: str
    files: int  # files stat'ed (modules of torch plus the extra files found)
    newest_change_ns: int  # the latest ctime among them: racily clean when close to now


def _is_module_file(name: str) -> bool:
    return name.endswith(_SUFFIXES) and name not in _SUFFIXES


def _is_package(names: set[str]) -> bool:
    return any("__init__" + suffix in names for suffix in _SUFFIXES)


def _stat_line(rel: str, st: os.stat_result) -> str:
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0{st.st_dev}\n"


def _walk(directory: str, rel: str, lines: list[str], newest: list[int], seen: set[tuple[int, int]]) -> None:
    """Stat every module file of the package at ``directory`` and of its sub-packages: what ``build_code_hash``
    reads. pkgutil lists a directory as a package only when it holds an ``__init__`` module and its name has no
    dot; ``__pycache__`` never qualifies (``__init__.cpython-311.pyc`` is module ``__init__.cpython-311``)."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as exc:
        lines.append(f"{rel}\0unreadable {exc.errno}\n")
        return
    if rel and not _is_package({e.name for e in entries}):
        return
    for entry in entries:
        name = entry.name
        path = f"{rel}/{name}" if rel else name
        try:
            if entry.is_dir():  # follows links, like pkgutil
                if name == "__pycache__" or "." in name:
                    continue
                if entry.is_symlink():  # a link cycle would recurse forever
                    st = entry.stat()
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                _walk(entry.path, path, lines, newest, seen)
            elif _is_module_file(name):
                st = entry.stat()
                lines.append(_stat_line(path, st))
                newest[0] = max(newest[0], st.st_ctime_ns)
        except OSError as exc:  # a dangling link or a file removed meanwhile: part of the identity too
            lines.append(f"{path}\0unreadable {exc.errno}\n")


def _optional_stat(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}\0absent\n"
    return _stat_line(str(path), st)


def install_identity(torch_dir: str | os.PathLike[str], version: str) -> InstallIdentity:
    """The identity of the torch installed at ``torch_dir`` (its package directory) with ``version``."""
    root = os.fspath(torch_dir)
    top = Path(root).stat()
    lines = [f"{_KIND} {MEMO_FORMAT}\n", f"version\0{version}\n", f"root\0{root}\0{os.path.realpath(root)}\n"]
    lines.append(f"root-inode\0{top.st_ino}\0{top.st_dev}\n")
    parent = Path(root).parent
    for info in sorted(parent.glob(f"{Path(root).name}-*.dist-info")):
        lines += [_optional_stat(info / "RECORD"), _optional_stat(info / "direct_url.json")]
    newest = [0]
    found: list[str] = []
    _walk(root, "", found, newest, {(top.st_dev, top.st_ino)})
    lines += sorted(found)
    for extra in _INDUCTOR_EXTRA_FILES:
        path = Path(root, "_inductor", extra)
        lines.append(_optional_stat(path))
        with contextlib.suppress(OSError):
            newest[0] = max(newest[0], path.stat().st_ctime_ns)
    digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    files = sum(1 for line in lines if line.count("\0") == 5)
    return InstallIdentity(digest=digest, files=files, newest_change_ns=newest[0])


def _walk_all(directory: str, rel: str, lines: list[str], newest: list[int], seen: set[tuple[int, int]]) -> None:
    """Stat every file below ``directory`` (links followed, cycles cut), ``__pycache__`` aside: nothing a hash
    of the tree can read escapes it."""
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError as exc:
        lines.append(f"{rel}\0unreadable {exc.errno}\n")
        return
    for entry in entries:
        name = entry.name
        path = f"{rel}/{name}" if rel else name
        try:
            if entry.is_dir():
                if name == "__pycache__":
                    continue
                st = entry.stat()
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                _walk_all(entry.path, path, lines, newest, seen)
            else:
                st = entry.stat()
                lines.append(_stat_line(path, st))
                newest[0] = max(newest[0], st.st_ctime_ns)
        except OSError as exc:
            lines.append(f"{path}\0unreadable {exc.errno}\n")


def tree_identity(package_dir: str | os.PathLike[str], version: str, *, extra: tuple[str, ...] = ()) -> InstallIdentity:
    """The identity of the package installed at ``package_dir`` with ``version``: every file below it, its
    dist-info ``RECORD``/``direct_url.json`` when they sit next to it, and ``extra`` facts the hash depends on
    (e.g. the interpreter's extension suffix, which picks the ``libtriton`` file)."""
    root = os.fspath(package_dir)
    top = Path(root).stat()
    lines = [f"{_KIND}-tree {MEMO_FORMAT}\n", f"version\0{version}\n", f"root\0{root}\0{os.path.realpath(root)}\n"]
    lines.append(f"root-inode\0{top.st_ino}\0{top.st_dev}\n")
    lines += [f"extra\0{fact}\n" for fact in extra]
    parent = Path(root).parent
    for info in sorted(parent.glob(f"{Path(root).name}-*.dist-info")):
        lines += [_optional_stat(info / "RECORD"), _optional_stat(info / "direct_url.json")]
    newest = [0]
    found: list[str] = []
    _walk_all(root, "", found, newest, {(top.st_dev, top.st_ino)})
    lines += sorted(found)
    digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    files = sum(1 for line in lines if line.count("\0") == 5)
    return InstallIdentity(digest=digest, files=files, newest_change_ns=newest[0])
