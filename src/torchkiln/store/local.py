"""The local filesystem store: artifacts at ``<root>/v1/<key>.tkln`` on a disk this process can write.

This module owns the on-disk layout of a local cache root, atomic write-once publishing, per-key file locks,
least-recently-used eviction, and the safety checks on the root. Layout under ``<root>/v1/``::

    <key>.tkln            a published artifact; never modified after it appears
    .tmp-<random>.part    a write in progress (hidden, never listed; gc removes ones idle for over an hour)
    locks/<key>.lock      the flock file behind ``lock(key)``

Why the root must be private: an artifact is unpickled on load, so anyone who can write into the cache can run
code as the user who loads from it. A root that is group/world-writable, or owned by another account, is
refused.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import filelock

from torchkiln import atomic_files
from torchkiln.errors import StoreError
from torchkiln.layout import VERSION_DIR
from torchkiln.store.base import ARTIFACT_SUFFIX, KEY_RE, StoreEntry, check_key, is_variant_of

__all__ = ["LAYOUT_VERSION", "TEMP_GRACE_S", "LocalStore"]

_log = logging.getLogger(__name__)

#: Free space a prewarm wants before it compiles: artifacts of small models are 1-20 MiB, of LLMs more.
MIN_FREE_BYTES = 64 << 20

#: The directory under a cache root that holds this layout (layout.py derives it from the format version), so two
#: torchkiln versions can share a root without reading each other's objects.
LAYOUT_VERSION = VERSION_DIR

#: gc leaves temp files younger than this alone: they may belong to a writer that is still running. A live
#: writer bumps its temp file's mtime with every write, so only a dead (e.g. SIGKILLed) writer's file ages
#: past this.
TEMP_GRACE_S = 3600.0

_TEMP_PREFIX = ".tmp-"
_TEMP_SUFFIX = ".part"
_LOCKS_DIR = "locks"
_UNWRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def _fix_for(exc: OSError, root: Path) -> str:
    if exc.errno in _UNWRITABLE:
        return (
            f"the cache root is not writable: set TORCHKILN_CACHE to a writable directory, "
            f"or fix the permissions of {root}"
        )
    if exc.errno in _FULL:
        return (
            "the disk holding the cache is full: free space (e.g. `torchkiln gc --max-size 2G`) "
            "or set TORCHKILN_CACHE to a directory on another disk"
        )
    return f"check that {root} is a usable local directory, or set TORCHKILN_CACHE to another one"


def _check_private_dir(path: Path) -> None:
    """Refuse a cache directory that another account could write into (see the module docstring)."""
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(
            "the cache root is not a directory",
            where=str(path),
            fix="set TORCHKILN_CACHE to a directory",
        )
    if sys.platform == "win32":  # mode bits and uids mean nothing there; ACLs are the user's business
        return
    if st.st_uid != os.geteuid():
        raise StoreError(
            f"the cache directory is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()}); "
            "artifacts are unpickled on load, so torchkiln only loads from a cache directory you own",
            where=str(path),
            fix="set TORCHKILN_CACHE to a directory of your own (or chown this one to yourself)",
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreError(
            f"the cache directory is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            "artifacts are unpickled on load, so anyone who can write here could run code as you",
            where=str(path),
            fix=f"run `chmod go-w {path}`, or set TORCHKILN_CACHE to a private directory",
        )


class LocalStore:
    """A cache root on a local (or locally mounted) filesystem. ``root`` is given without the ``v1`` part."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        # absolute but not resolve()d: a symlinked root keeps the name the user gave it
        self.root = Path(os.path.abspath(Path(root).expanduser()))  # noqa: PTH100
        self.dir = self.root / LAYOUT_VERSION
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    # -- helpers ---------------------------------------------------------------------------------------------

    def _where(self, key: str | None = None) -> str:
        return f"{self.dir} key={key}" if key is not None else str(self.dir)

    def _path(self, key: str) -> Path:
        return self.dir / (key + ARTIFACT_SUFFIX)

    def _error(self, what: str, exc: OSError, key: str | None = None) -> StoreError:
        return StoreError(f"{what}: {exc.strerror or exc}", where=self._where(key), fix=_fix_for(exc, self.root))

    def _prepare(self, *, create: bool) -> bool:
        """Check (and with ``create``, make) the root and its ``v1`` dir; ``False`` if absent and not created.

        Runs on every call rather than once per instance: it costs two stats, and a root whose permissions
        change under a long-lived process must be refused from then on.
        """
        if create:
            # mode applies to the leaf only; the parents (e.g. ~/.cache) keep the user's umask.
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_private_dir(self.root)
            self.dir.mkdir(mode=0o700, exist_ok=True)
        elif not self.dir.is_dir():
            return False
        else:
            _check_private_dir(self.root)
        _check_private_dir(self.dir)
        return True

    def _touch(self, fd: int, key: str) -> None:
        """Record a read for LRU: atime := now, mtime stays the write time. One syscall on the open fd."""
        try:
            st = os.fstat(fd)
            os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
        except OSError as exc:
            # A read-only root still serves reads; the LRU hint only makes gc's order less exact.
            _log.debug("could not record the read of %s: %s", self._where(key), exc)

    # -- the Store protocol --------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        check_key(key, where=self._where(key))
        try:
            if not self._prepare(create=False):
                return None
            # The file is complete by construction (put links it only after fsync), so reading to EOF is the
            # whole artifact; an open fd keeps reading the same inode even if gc unlinks the name meanwhile.
            with open(self._path(key), "rb") as f:
                data = f.read()
                self._touch(f.fileno(), key)
        except StoreError:
            raise
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("cannot read the artifact", exc, key) from exc
        return data

    def put(self, key: str, data: bytes) -> bool:
        check_key(key, where=self._where(key))
        path = self._path(key)
        try:
            self._prepare(create=True)
            if path.exists():  # cheap early answer; create_new's link is what actually enforces write-once
                return False
        except StoreError:
            raise
        except OSError as exc:
            raise self._error("cannot write to the cache", exc, key) from exc
        try:
            # Durable (fsync'ed file and directory), mode 0600; the temp name is hidden from list() and removed by
            # gc once a dead writer's file is older than TEMP_GRACE_S.
            return atomic_files.create_new(path, data, temp_prefix=_TEMP_PREFIX, temp_suffix=_TEMP_SUFFIX)
        except OSError as exc:
            raise self._error("cannot write the artifact", exc, key) from exc

    def check_writable(self, *, need_bytes: int = MIN_FREE_BYTES) -> None:
        """``StoreError`` unless a ``put`` could succeed now: the root exists (or can be made), is private and
        writable, and its disk has ``need_bytes`` free. A prewarm calls it before a compile of a minute, so that
        an unusable cache fails in milliseconds instead of after the work (issue 11)."""
        try:
            self._prepare(create=True)
            writable = os.access(self.dir, os.W_OK | os.X_OK)
            free = shutil.disk_usage(self.dir).free
        except StoreError:
            raise
        except OSError as exc:
            raise self._error("cannot write to the cache", exc) from exc
        if not writable:
            raise StoreError(
                "the cache directory is not writable",
                where=self._where(),
                fix="set TORCHKILN_CACHE (or --cache) to a directory of yours",
            )
        if free < need_bytes:
            raise StoreError(
                f"the cache disk has {free >> 20} MiB free, less than the {need_bytes >> 20} MiB an artifact may need",
                where=self._where(),
                fix="free some space (torchkiln gc --max-size SIZE) or use a cache on another disk",
            )

    def delete(self, key: str) -> bool:
        check_key(key, where=self._where(key))
        try:
            if not self._prepare(create=False):
                return False
            self._path(key).unlink()
        except StoreError:
            raise
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("cannot delete the artifact", exc, key) from exc
        return True

    def list(self) -> builtins.list[StoreEntry]:
        try:
            if not self._prepare(create=False):
                return []
            return list(self._scan())
        except StoreError:
            raise
        except OSError as exc:
            raise self._error("cannot list the cache", exc) from exc

    def variants(self, key: str) -> builtins.list[str]:
        check_key(key, where=self._where(key))
        return sorted(e.key for e in self.list() if is_variant_of(e.key, key))

    def _scan(self) -> Iterator[StoreEntry]:
        with os.scandir(self.dir) as it:
            for dirent in it:
                key = dirent.name[: -len(ARTIFACT_SUFFIX)]
                # Temp files (leading dot, other suffix) and anything not made by put() are not artifacts.
                if not dirent.name.endswith(ARTIFACT_SUFFIX) or not KEY_RE.fullmatch(key) or key[0] == ".":
                    continue
                try:
                    st = dirent.stat(follow_symlinks=False)
                except FileNotFoundError:  # deleted since scandir listed it
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield StoreEntry(key=key, size=st.st_size, last_used=max(st.st_atime, st.st_mtime))

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        """An exclusive flock on ``locks/<key>.lock``; the kernel drops it when the holder dies: never stale.

        ``timeout`` < 0 waits forever. The lock is not reentrant: a second ``lock(key)`` in the same process
        waits like any other process would.
        """
        check_key(key, where=self._where(key))
        lock_path = self.dir / _LOCKS_DIR / (key + ".lock")
        try:
            self._prepare(create=True)
            lock_path.parent.mkdir(mode=0o700, exist_ok=True)
            file_lock = filelock.FileLock(str(lock_path), timeout=timeout, mode=0o600)
            file_lock.acquire()
        except StoreError:
            raise
        except filelock.Timeout as exc:  # before OSError: Timeout is a TimeoutError
            raise StoreError(
                f"timed out after {timeout:g} s waiting for the compile lock",
                where=self._where(key),
                fix="another process is compiling this key and holds the lock until it finishes or exits; "
                "wait for it, or pass a longer timeout",
            ) from exc
        except OSError as exc:
            raise self._error("cannot take the compile lock", exc, key) from exc
        try:
            yield
        finally:
            file_lock.release()

    def gc(self, max_size: int) -> builtins.list[str]:
        """Evict least recently used artifacts until at most ``max_size`` bytes remain; returns evicted keys.

        Safe against concurrent readers: eviction is ``unlink``, which on POSIX removes only the name. A
        process that already opened the artifact keeps reading the inode to the end, and the space is freed
        when it closes it. Also removes temp files of dead writers (idle for over ``TEMP_GRACE_S``). Lock
        files are left in place: they are empty, and unlinking one that a waiter has already opened would
        split waiters across two inodes and break mutual exclusion (filelock keeps its Unix lock files for the
        same reason).
        """
        if max_size < 0:
            raise StoreError(f"gc max_size must be >= 0, got {max_size}", where=self._where(), fix="pass a size")
        try:
            if not self._prepare(create=False):
                return []
            self._remove_stale_temps()
            return self._evict(max_size)
        except StoreError:
            raise
        except OSError as exc:
            raise self._error("gc failed", exc) from exc

    def _evict(self, max_size: int) -> builtins.list[str]:
        entries = sorted(self._scan(), key=lambda e: (e.last_used, e.key))
        total = sum(e.size for e in entries)
        evicted: builtins.list[str] = []
        for entry in entries:
            if total <= max_size:
                break
            path = self._path(entry.key)
            try:
                st = path.stat()
                if max(st.st_atime, st.st_mtime) > entry.last_used:
                    continue  # read since the scan: no longer the least recently used one
                path.unlink()
            except FileNotFoundError:  # another gc or a delete got there first; it no longer counts either way
                total -= entry.size
                continue
            total -= entry.size
            evicted.append(entry.key)
        return evicted

    def _remove_stale_temps(self) -> None:
        now = time.time()
        with os.scandir(self.dir) as it:
            for dirent in it:
                if not (dirent.name.startswith(_TEMP_PREFIX) and dirent.name.endswith(_TEMP_SUFFIX)):
                    continue
                try:
                    if now - dirent.stat(follow_symlinks=False).st_mtime > TEMP_GRACE_S:
                        Path(dirent.path).unlink()
                except FileNotFoundError:
                    continue
