"""Atomic file writes: the one way torchkiln puts a whole file under a name on a local disk.

This module owns the sequence that makes a write all-or-nothing for every reader: the bytes go to a hidden temp
file in the target's own directory (so the final step never crosses a filesystem), optionally fsync'ed, get their
mode bits, and only then receive the final name:

* :func:`create_new` never replaces an existing name: ``os.link`` fails with ``EEXIST`` atomically, so exactly one
  of N racing writers wins. Where the filesystem has no hard links it checks, then renames (a racer in that window
  replaces one complete file by another complete one, never by a partial one).
* :func:`replace` renames over the name (for files that are meant to be replaced, such as the install memo).

A reader sees no file or the complete file, never a partial one; the temp file is removed whatever happens. Callers
own their directories, path checks, temp-file names and error messages. Used by the local store's write-once
publish (store/local.py), the kernel bundle's restore into the Inductor cache (kernels/install.py) and the install
memo (inductor_cache/memo.py).
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["create_new", "fsync_dir", "replace"]

_log = logging.getLogger(__name__)

# os.write may write fewer bytes than asked (Linux caps one call near 2 GiB), so writes go in bounded chunks.
_CHUNK = 1 << 20
# errnos with which a filesystem says "no hard links here" (some FUSE, SMB and FAT mounts).
_NO_HARDLINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV})


def create_new(
    path: Path,
    data: bytes,
    *,
    temp_prefix: str,
    temp_suffix: str,
    mode: int | None = None,
    durable: bool = True,
) -> bool:
    """Atomically create ``path`` holding ``data``; False (and nothing changed) if the name already exists.

    ``mode``: the file's permission bits; None keeps the temp file's 0600. ``durable``: fsync the file before it
    gets its name and the directory after, so a crash after a True return cannot lose the file or leave it torn.
    The directory must exist. Raises ``OSError`` for anything else that fails.
    """
    tmp = _write_temp(path.parent, data, prefix=temp_prefix, suffix=temp_suffix, mode=mode, durable=durable)
    try:
        created = _link_or_rename(tmp, path)
        if created and durable:
            fsync_dir(path.parent)
        return created
    finally:
        _discard(tmp)


def replace(
    path: Path,
    data: bytes,
    *,
    temp_prefix: str,
    temp_suffix: str,
    mode: int | None = None,
    durable: bool = True,
) -> None:
    """Atomically make ``path`` hold ``data``, replacing whatever file had the name. Arguments as :func:`create_new`."""
    tmp = _write_temp(path.parent, data, prefix=temp_prefix, suffix=temp_suffix, mode=mode, durable=durable)
    try:
        tmp.replace(path)
        if durable:
            fsync_dir(path.parent)
    finally:
        _discard(tmp)


def fsync_dir(path: Path) -> None:
    """Make a new directory entry durable: a crash after the write returned cannot lose the file's name."""
    if sys.platform == "win32":  # no directory handles to fsync; NTFS journals the new name itself
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems refuse fsync on a directory; the data itself is already synced.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, *, prefix: str, suffix: str, mode: int | None, durable: bool) -> Path:
    # mkstemp: O_EXCL with a random name, mode 0600, so no other process can open or pre-create it.
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    tmp = Path(name)
    try:
        try:
            _write_all(fd, memoryview(data).cast("B"))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if mode is not None:
            tmp.chmod(mode)  # before the name appears: nobody ever sees the file with other bits
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _write_all(fd: int, data: memoryview) -> None:
    offset = 0
    while offset < len(data):
        offset += os.write(fd, data[offset : offset + _CHUNK])


def _link_or_rename(tmp: Path, path: Path) -> bool:
    """Give the fully written temp file its final name, unless that name exists (never replace)."""
    try:
        # link() fails with EEXIST instead of replacing, atomically: exactly one of N racing writers wins, and a
        # reader sees either no file or the complete one.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_HARDLINKS:
            raise
    # No hard links on this filesystem. rename() cannot refuse to replace, so check first (lexists: a dangling
    # symlink is a name too); a writer racing through this window replaces one complete file by another.
    if os.path.lexists(path):
        return False
    tmp.replace(path)
    return True


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError as exc:
        # The write's own outcome stands; a leftover is a hidden temp name no reader opens (the local store's gc
        # removes its own after TEMP_GRACE_S).
        _log.debug("could not remove temp file %s: %s", tmp, exc)
