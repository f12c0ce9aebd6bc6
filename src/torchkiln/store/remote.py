"""RemoteStore: artifacts in object storage (``s3://``, ``gs://``, any fsspec URL), with bounded waits.

Owns the remote half of the cache: the object layout, write-once atomic publish, the timeout policy and the
mapping of every backend failure to ``StoreError``. The fleet-wide compile lease lives in ``lease.py``; the
local tier in front of this store lives in ``tiered.py``.

Layout under the URL's prefix (docs/FLEET.md)::

    <prefix>/v1/<key>.tkln                  published artifacts, written once
    <prefix>/v1/leases/<key>/<token>.lease  compile claims (lease.py), short-lived
    <prefix>/v1/tmp/<key>.<token>.part      uploads in flight on backends without an atomic PUT

Publishing: on S3 one ``PutObject`` is already atomic (the object is invisible until the upload completes,
multipart included), so the artifact is written straight to its final name with ``If-None-Match: *``: a
concurrent second publisher gets ``412`` and ``put`` returns ``False``. A server that does not implement
conditional writes gets an existence check first (two racing publishers then both write a whole, valid object
and the last one stays). Other backends upload to a temporary name and move it into place.

Timeouts: every remote call runs under a hard deadline (``timeout``, default ``TORCHKILN_REMOTE_TIMEOUT`` or
30 s) on a daemon thread, on top of the backend's own connect/read timeouts and a small retry count, so an
unreachable, slow or failing remote turns into ``StoreError`` within the budget and never hangs start-up.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from torchkiln.errors import StoreError
from torchkiln.store.base import ARTIFACT_SUFFIX, INSTALL_HINTS, StoreEntry, check_key, evict_lru, is_variant_of
from torchkiln.store.lease import DEFAULT_TTL, ENV_LEASE_TTL, Lease, ObjectLeaseIO, acquire_lease

__all__ = ["DEFAULT_TIMEOUT", "ENV_TIMEOUT", "RemoteStore", "remote_timeout"]

T = TypeVar("T")
log = logging.getLogger(__name__)

ENV_TIMEOUT = "TORCHKILN_REMOTE_TIMEOUT"
#: The issue asks for a bounded wait of at most 30 s before a local compile takes over.
DEFAULT_TIMEOUT = 30.0
FORMAT_DIR = "v1"


def remote_timeout(value: float | None = None) -> float:
    """The per-call deadline in seconds: ``value``, else ``TORCHKILN_REMOTE_TIMEOUT``, else 30 s."""
    if value is not None:
        return float(value)
    raw = os.environ.get(ENV_TIMEOUT)
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise StoreError(
            f"{ENV_TIMEOUT}={raw!r} is not a positive number of seconds",
            where=ENV_TIMEOUT,
            fix=f"set {ENV_TIMEOUT} to e.g. 10, or unset it for the default of {DEFAULT_TIMEOUT:g} s",
        )
    return seconds


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def run_bounded(fn: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``fn`` on a daemon thread and give up after ``timeout`` seconds with ``TimeoutError``.

    The thread cannot be cancelled; a daemon thread at least never blocks interpreter exit, and every remote
    write is atomic, so a call abandoned half way leaves either nothing or a whole object behind.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread below
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name=f"torchkiln-remote-{what}", daemon=True).start()
    if not done.wait(timeout):
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


def _open_filesystem(url: str, timeout: float, options: dict[str, Any]) -> tuple[Any, str]:
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


class RemoteStore:
    """Artifacts as objects ``<prefix>/v1/<key>.tkln`` in any fsspec filesystem (S3 first)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = None,
        lease_ttl: float | None = None,
        **storage_options: Any,
    ) -> None:
        self.url = url.rstrip("/")
        self._options = dict(storage_options)
        self.timeout = remote_timeout(timeout)
        self.lease_ttl = float(lease_ttl) if lease_ttl is not None else _env_float(ENV_LEASE_TTL, DEFAULT_TTL)
        self._fs, prefix = _open_filesystem(self.url, self.timeout, storage_options)
        self.root = f"{prefix}/{FORMAT_DIR}"
        protocols = self._fs.protocol if isinstance(self._fs.protocol, tuple) else (self._fs.protocol,)
        self._s3 = "s3" in protocols
        self._conditional_put = self._s3  # set to False once the server rejects If-None-Match

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, timeout={self.timeout:g})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its arguments in the receiving process: a filesystem object carries sessions,
        # event loops and threads that must not cross a process boundary.
        return (_rebuild, (self.url, self.timeout, self.lease_ttl, self._options))

    # -- plumbing ---------------------------------------------------------------------------------------
    def _where(self, key: str | None = None) -> str:
        return f"{self.url} key {key}" if key else self.url

    def _check_key(self, key: str) -> None:
        check_key(key, where=self._where(key))  # the same portable alphabet as the local store

    def _call(self, what: str, key: str | None, fn: Callable[[], T], *, answers: tuple[type[OSError], ...] = ()) -> T:
        """``fn()`` under the deadline. Exceptions in ``answers`` ("absent", "already there") reach the
        caller as they are; every other failure becomes ``StoreError``."""
        try:
            return run_bounded(fn, self.timeout, what)
        except answers:
            raise
        except Exception as exc:  # botocore/aiohttp/gcsfs errors share no base class beyond Exception
            raise StoreError(
                f"remote {what} failed: {type(exc).__name__}: {exc}",
                where=self._where(key),
                fix=f"check the endpoint, credentials and network; {ENV_TIMEOUT} bounds each call "
                f"(now {self.timeout:g} s)",
            ) from exc

    def _write(self, what: str, key: str | None, path: str, data: bytes) -> None:
        """A plain upload; object stores have no directories, a mounted filesystem needs them made."""

        def write() -> None:
            if not self._s3:
                self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._fs.pipe_file(path, data)

        self._call(what, key, write)

    def path(self, key: str) -> str:
        """The object path of ``key`` inside the filesystem."""
        self._check_key(key)
        return f"{self.root}/{key}{ARTIFACT_SUFFIX}"

    # -- Store protocol ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            data = self._call("get", key, lambda: self._fs.cat_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return None
        return bytes(data)

    def exists(self, key: str) -> bool:
        path = self.path(key)
        return bool(self._call("exists", key, lambda: self._fs.exists(path)))

    def put(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        if self._conditional_put:
            try:
                self._call(
                    "put",
                    key,
                    lambda: self._fs.pipe_file(path, data, mode="create"),
                    answers=(FileExistsError,),
                )
            except FileExistsError:
                return False
            except StoreError as exc:
                if not _is_unsupported(exc):
                    raise
                self._conditional_put = False  # e.g. an older MinIO/Ceph: fall back to check-then-put
            else:
                return True
        if self.exists(key):
            return False
        if self._s3:
            self._write("put", key, path, data)
            return True
        tmp = f"{self.root}/tmp/{key}.{secrets.token_hex(8)}.part"
        self._write("put", key, tmp, data)
        try:
            self._call("put", key, lambda: self._fs.mv(tmp, path))
        except BaseException:
            self._delete_quietly(tmp)
            raise
        return True

    def delete(self, key: str) -> bool:
        path = self.path(key)
        # S3 deletes of absent keys succeed silently, so "was it there" needs a look first; the race
        # between the look and the delete can only mislabel the return value, never the state.
        if not self.exists(key):
            return False
        try:
            self._call("delete", key, lambda: self._fs.rm_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return False
        return True

    def list(self) -> list[StoreEntry]:
        try:
            infos = self._call("list", None, lambda: self._fs.ls(self.root, detail=True), answers=(FileNotFoundError,))
        except FileNotFoundError:
            return []
        entries = []
        for info in infos:
            name = str(info.get("name", "")).rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") != "file" or not name.endswith(ARTIFACT_SUFFIX):
                continue
            key = name[: -len(ARTIFACT_SUFFIX)]
            entries.append(StoreEntry(key=key, size=int(info.get("size") or 0), last_used=_mtime(info)))
        return entries

    def variants(self, key: str) -> builtins.list[str]:
        """One prefix listing (S3 ListObjectsV2 with a prefix), not a listing of the whole bucket."""
        self._check_key(key)
        pattern = f"{self.root}/{key}.*{ARTIFACT_SUFFIX}"
        paths = self._call("list variants", key, lambda: self._fs.glob(pattern))
        names = (str(p).rstrip("/").rsplit("/", 1)[-1][: -len(ARTIFACT_SUFFIX)] for p in paths)
        return sorted(n for n in names if is_variant_of(n, key))

    def gc(self, max_size: int) -> builtins.list[str]:
        """Evict the oldest-written artifacts (S3 keeps no read times) until at most ``max_size`` bytes stay.

        For a shared bucket prefer a lifecycle rule (docs/FLEET.md): it needs no client with delete rights.
        """
        return evict_lru(self, max_size)

    def lock(self, key: str, timeout: float) -> AbstractContextManager[None]:
        """Host-local file lock (ranks of one machine queue there), then the fleet-wide lease."""
        return self._host_then_lease(key, timeout)

    @contextmanager
    def _host_then_lease(self, key: str, timeout: float) -> Iterator[None]:
        import time

        from filelock import FileLock, Timeout

        start = time.monotonic()
        lock_path = _host_lock_path(self.url, self.path(key))
        host_lock = FileLock(str(lock_path))
        try:
            host_lock.acquire(timeout=timeout)
        except Timeout as exc:
            raise StoreError(
                f"timed out after {timeout:g} s waiting for another process on this host to compile",
                where=f"{self._where(key)} (host lock {lock_path})",
                fix="raise the lock timeout, or remove the lock file if no torchkiln process runs",
            ) from exc
        try:
            with self.lease(key, max(0.0, timeout - (time.monotonic() - start))):
                yield
        finally:
            host_lock.release()

    @contextmanager
    def lease(self, key: str, timeout: float) -> Iterator[None]:
        """The fleet-wide compile lease for ``key`` (lease.py); returns early once the artifact exists."""
        self._check_key(key)
        held: Lease | None = acquire_lease(ObjectLeaseIO(self), key, timeout=timeout, ttl=self.lease_ttl)
        try:
            yield
        finally:
            if held is not None:
                held.release()

    # -- helpers for lease.py ---------------------------------------------------------------------------
    def _delete_quietly(self, path: str) -> None:
        try:
            self._call("delete", None, lambda: self._fs.rm_file(path), answers=(FileNotFoundError,))
        except FileNotFoundError:
            pass
        except StoreError as exc:
            # Best effort: a leftover claim expires after its ttl, and the lifecycle rule sweeps tmp/.
            log.debug("could not delete %s: %s", path, exc)


def _rebuild(url: str, timeout: float, lease_ttl: float, options: dict[str, Any]) -> RemoteStore:
    return RemoteStore(url, timeout=timeout, lease_ttl=lease_ttl, **options)


def _is_unsupported(exc: StoreError) -> bool:
    cause = exc.__cause__
    text = f"{type(cause).__name__} {cause}"
    return isinstance(cause, NotImplementedError) or "NotImplemented" in text or "501" in text


def _host_lock_path(url: str, object_path: str) -> Path:
    """A lock file on this host for one remote object, under the user cache dir (XDG_CACHE_HOME honoured)."""
    import platformdirs

    digest = hashlib.sha256(f"{url}\0{object_path}".encode()).hexdigest()[:32]
    folder = Path(platformdirs.user_cache_dir("torchkiln")) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"remote-{digest}.lock"
