"""Bounded object access over fsspec: the one place the remote tier calls a filesystem.

Owns every fsspec call that the remote store and the fleet lease make, the hard deadline around each one
(``run_bounded``), the backend's own connect/read timeouts and retry count (``open_filesystem``), write-once
publishing (``put_if_absent``), and the translation of every backend failure into ``StoreError``. It knows paths,
not keys: the layout (which path holds an artifact, a claim or an upload in flight) belongs to remote.py.

Answers that are not failures come back as values, never as exceptions: an absent object is ``None``, ``False``
or an empty listing, and an object that already exists makes ``put_if_absent`` return ``False``.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as _dt
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torchkiln import progress
from torchkiln.errors import StoreError
from torchkiln.store.base import INSTALL_HINTS

__all__ = ["BoundedFS", "ObjectInfo", "open_filesystem", "run_bounded"]

T = TypeVar("T")
log = logging.getLogger(__name__)


#: A remote call slower than this is announced (progress.py): a silent 30 s wait looks like a hang.
ANNOUNCE_AFTER = 2.0


def run_bounded(fn: Callable[[], T], timeout: float, what: str, *, announce: str | None = None) -> T:
    """Run ``fn`` on a daemon thread and give up after ``timeout`` seconds with ``TimeoutError``.

    With ``announce``, a call still running after ``ANNOUNCE_AFTER`` seconds is reported as that activity (the
    wait below does it: no timer thread per call on the hit path).

    The thread cannot be cancelled; a daemon thread at least never blocks interpreter exit, and every remote
    write is atomic, so a call abandoned half way leaves either nothing or a whole object behind.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"torchkiln-remote-{what}", daemon=True).start()
    finished = done.wait(min(timeout, ANNOUNCE_AFTER) if announce else timeout)
    if not finished and announce and timeout > ANNOUNCE_AFTER:
        with progress.activity(announce):
            finished = done.wait(timeout - ANNOUNCE_AFTER)
    if not finished:
        raise TimeoutError(f"{what} took longer than {timeout:g} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _mtime(info: dict[str, Any]) -> float:
    """Seconds since the epoch of an fsspec ``info`` dict's last write, whatever the backend calls it."""
    for name in ("LastModified", "mtime", "updated", "last_modified", "created"):
        value = info.get(name)
        if isinstance(value, _dt.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def open_filesystem(url: str, timeout: float, options: dict[str, Any]) -> tuple[Any, str]:
    """An fsspec filesystem for ``url`` with bounded timeouts, and the root path inside it."""
    import fsspec
    from fsspec.core import split_protocol

    protocol = split_protocol(url)[0] or "file"
    hint = INSTALL_HINTS.get(protocol, f"install the fsspec backend package for {protocol}://")
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise StoreError(f"no storage backend for {protocol}:// ({exc})", where=url, fix=hint) from exc
    except ValueError as exc:
        raise StoreError(
            f"unknown storage protocol {protocol!r}",
            where=url,
            fix="use a path, file://, s3://bucket/prefix, gs://bucket/prefix or another fsspec URL",
        ) from exc
    opts = dict(options)
    # fsspec reuses one filesystem instance per (protocol, options) in a process (and drops them after a
    # fork), which saves a client set-up per store; listings must be fresh for the lease protocol, so the
    # listing cache is off.
    opts.setdefault("use_listings_cache", False)
    if protocol in ("s3", "s3a"):
        config = dict(opts.pop("config_kwargs", None) or {})
        config.setdefault("connect_timeout", min(5.0, timeout / 3))
        config.setdefault("read_timeout", min(15.0, timeout / 2))
        config.setdefault("retries", {"max_attempts": 2, "mode": "standard"})
        opts["config_kwargs"] = config
        # botocore reads AWS_ENDPOINT_URL itself since 1.31; passing it explicitly covers older ones.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = opts.get("client_kwargs") or {}
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in client_kwargs:
            opts["endpoint_url"] = endpoint
    try:
        fs, root = fsspec.core.url_to_fs(url, **opts)
    except ImportError as exc:
        raise StoreError(f"no storage backend for {protocol}:// ({exc})", where=url, fix=hint) from exc
    except (TypeError, ValueError) as exc:
        raise StoreError(f"invalid storage options for {url}: {exc}", where=url) from exc
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries on top of botocore's; one layer of retries keeps the budget honest
    return fs, str(root).rstrip("/")


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing or ``info`` reports it, whatever the backend calls the fields."""

    path: str
    #: the last path component
    name: str
    size: int
    #: seconds since the epoch of the last write (0.0 where the backend reports none)
    mtime: float
    #: False for a directory (or an S3 common prefix)
    is_file: bool

    @classmethod
    def from_fsspec(cls, info: dict[str, Any]) -> ObjectInfo:
        path = str(info.get("name", "")).rstrip("/")
        return cls(
            path=path,
            name=path.rsplit("/", 1)[-1],
            size=int(info.get("size") or 0),
            mtime=_mtime(info),
            is_file=info.get("type") == "file",
        )


class BoundedFS:
    """An fsspec filesystem whose every call runs under ``timeout`` seconds and fails only with ``StoreError``.

    ``url`` names the store in error messages; ``timeout_setting`` names what sets the deadline (the caller's
    environment variable or argument), so the fix hint of a timed-out call says what to change.
    """

    def __init__(self, fs: Any, *, url: str, timeout: float, timeout_setting: str) -> None:
        #: the fsspec filesystem itself, for callers (tests, tools) that inspect the bucket directly
        self.fs = fs
        self.url = url
        self.timeout = timeout
        self.timeout_setting = timeout_setting
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        #: S3: one PUT is atomic and there are no directories to create
        self.object_store = "s3" in protocols
        self._conditional_put = self.object_store  # set to False once the server rejects If-None-Match

    def __repr__(self) -> str:
        return f"BoundedFS({self.url!r}, timeout={self.timeout:g})"

    def where(self, key: str | None = None) -> str:
        return f"{self.url} key {key}" if key else self.url

    def _call(self, what: str, key: str | None, fn: Callable[[], T], *, answers: tuple[type[OSError], ...] = ()) -> T:
        """``fn()`` under the deadline. Exceptions in ``answers`` ("absent", "already there") reach the
        caller as they are; every other failure becomes ``StoreError``."""
        try:
            return run_bounded(fn, self.timeout, what, announce=f"remote {what} on {self.where(key)}")
        except answers:
            raise
        except Exception as exc:  # botocore/aiohttp/gcsfs errors share no base class beyond Exception
            raise StoreError(
                f"remote {what} failed: {type(exc).__name__}: {exc}",
                where=self.where(key),
                fix=f"check the endpoint, credentials and network; {self.timeout_setting} bounds each call "
                f"(now {self.timeout:g} s)",
            ) from exc

    # -- reads ------------------------------------------------------------------------------------------
    def exists(self, path: str, *, key: str | None = None, what: str = "exists") -> bool:
        return bool(self._call(what, key, lambda: self.fs.exists(path)))

    def get(self, path: str, *, key: str | None = None, what: str = "get") -> bytes | None:
        """The whole object, or ``None`` when it is absent."""
        try:
            data = self._call(what, key, lambda: self.fs.cat_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return None
        return bytes(data)

    def get_many(self, paths: Sequence[str], *, key: str | None = None, what: str = "get") -> dict[str, bytes]:
        """path -> bytes of each of ``paths`` that still exists, in one bounded call."""
        if not paths:
            return {}
        # An object deleted between the caller's listing and this read is simply gone: on_error="omit" drops it.
        bodies = self._call(what, key, lambda: self.fs.cat(builtins.list(paths), on_error="omit"))
        if not isinstance(bodies, dict):  # some backends answer a one-path list with the bytes themselves
            bodies = {paths[0]: bodies}
        return {str(p): bytes(b) for p, b in bodies.items()}

    def info(self, path: str, *, key: str | None = None, what: str = "info") -> ObjectInfo | None:
        try:
            raw = self._call(what, key, lambda: self.fs.info(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return None
        return ObjectInfo.from_fsspec(raw)

    def list(self, folder: str, *, key: str | None = None, what: str = "list") -> builtins.list[ObjectInfo]:
        """Everything directly under ``folder``; an absent folder is an empty listing."""
        try:
            infos = self._call(what, key, lambda: self.fs.ls(folder, detail=True), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return []
        return [ObjectInfo.from_fsspec(info) for info in infos]

    def names(self, folder: str, *, key: str | None = None, what: str = "list") -> builtins.list[str]:
        """The paths directly under ``folder``, without per-object details (no stat per entry on mounts)."""
        try:
            found = self._call(what, key, lambda: self.fs.ls(folder, detail=False), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return []
        return [str(name) for name in found]

    def glob(self, pattern: str, *, key: str | None = None, what: str = "list") -> builtins.list[str]:
        """One prefix listing on object stores (S3 ListObjectsV2 with a prefix), not a listing of the bucket."""
        return [str(p) for p in self._call(what, key, lambda: self.fs.glob(pattern))]

    # -- writes -----------------------------------------------------------------------------------------
    def put(self, path: str, data: bytes, *, key: str | None = None, what: str = "put") -> None:
        """A plain upload that replaces any object at ``path``: for objects only their owner writes (claims)."""

        def write() -> None:
            # Object stores have no directories; a mounted filesystem needs them made.
            if not self.object_store:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)

        self._call(what, key, write)

    def put_if_absent(self, path: str, data: bytes, *, staging: str, key: str | None = None) -> bool:
        """Publish ``data`` at ``path`` atomically and write-once; ``False`` (and no change) if it exists.

        S3: one ``PutObject`` is atomic (the object is invisible until the upload completes, multipart included),
        so it goes straight to ``path`` with ``If-None-Match: *``; a concurrent second publisher gets ``412``. A
        server without conditional writes gets an existence check first (two racing publishers then both write
        a whole, valid object and the last one stays). Other backends upload to ``staging`` and move it into place;
        its folder is made, ``path``'s is not, so remote.py keeps staging inside the folder it publishes into.
        """
        if self._conditional_put:
            try:
                self._call("put", key, lambda: self.fs.pipe_file(path, data, mode="create"), answers=(FileExistsError,))
            except FileExistsError:
                return False
            except StoreError as exc:
                if not _is_unsupported(exc):
                    raise
                self._conditional_put = False  # e.g. an older MinIO/Ceph: fall back to check-then-put
            else:
                return True
        if self.exists(path, key=key):
            return False
        if self.object_store:
            self.put(path, data, key=key)
            return True
        self.put(staging, data, key=key)
        try:
            self._call("put", key, lambda: self.fs.mv(staging, path))
        except BaseException:
            self.delete_quietly(staging)
            raise
        return True

    def delete(self, path: str, *, key: str | None = None) -> bool:
        """Remove the object; ``False`` if it was absent."""
        # S3 deletes of absent keys succeed silently, so "was it there" needs a look first; the race
        # between the look and the delete can only mislabel the return value, never the state.
        if not self.exists(path, key=key):
            return False
        try:
            self._call("delete", key, lambda: self.fs.rm_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return False
        return True

    def delete_quietly(self, path: str) -> None:
        """Best effort, for leftovers that clean up after themselves: never raises."""
        try:
            self._call("delete", None, lambda: self.fs.rm_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            pass
        except StoreError as exc:
            # A leftover claim expires after its ttl, and the lifecycle rule sweeps tmp/.
            log.debug("could not delete %s: %s", path, exc)


def _is_unsupported(exc: StoreError) -> bool:
    cause = exc.__cause__
    text = f"{type(cause).__name__} {cause}"
    return isinstance(cause, NotImplementedError) or "NotImplemented" in text or "501" in text
