"""RemoteStore: artifacts in object storage (``s3://``, ``gs://``, any fsspec URL), with bounded waits.

Owns the remote half of the cache: the object layout, the timeout policy, and the claim objects that make this
store ``Leasable`` (store/base.py). The fleet-wide compile lease itself lives in ``lease.py``, the bounded fsspec
calls (write-once publish included) in ``objects.py``, the local tier in front of this store in ``tiered.py``.

Layout under the URL's prefix (docs/FLEET.md)::

    <prefix>/v1/<key>.tkln                  published artifacts, written once
    <prefix>/v1/leases/<key>/<token>.lease  compile claims (lease.py), short-lived
    <prefix>/v1/tmp/<key>.<token>.part      uploads in flight on backends without an atomic PUT

Publishing (``BoundedFS.put_if_absent``): on S3 one ``PutObject`` is already atomic, so the artifact is written
straight to its final name with ``If-None-Match: *``: a concurrent second publisher gets ``412`` and ``put``
returns ``False``. A server that does not implement conditional writes gets an existence check first. Other
backends upload to ``tmp/`` and move the object into place.

Timeouts: every remote call runs under a hard deadline (``timeout``, default ``TORCHKILN_REMOTE_TIMEOUT`` or
30 s) on a daemon thread, on top of the backend's own connect/read timeouts and a small retry count, so an
unreachable, slow or failing remote turns into ``StoreError`` within the budget and never hangs start-up. The
calls themselves, their bounds and the error translation live in objects.py; this module says which path
holds what.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from torchkiln import settings
from torchkiln.errors import StoreError
from torchkiln.layout import VERSION_DIR
from torchkiln.store.base import ARTIFACT_SUFFIX, StoreEntry, check_key, evict_lru, is_variant_of
from torchkiln.store.lease import LEASE_SUFFIX, hold_lease
from torchkiln.store.objects import BoundedFS, open_filesystem

__all__ = ["DEFAULT_TIMEOUT", "ENV_TIMEOUT", "RemoteStore", "remote_timeout"]

ENV_TIMEOUT = settings.ENV_REMOTE_TIMEOUT
#: The issue asks for a bounded wait of at most 30 s before a local compile takes over.
DEFAULT_TIMEOUT = settings.DEFAULT_REMOTE_TIMEOUT


def remote_timeout(value: float | None = None) -> float:
    """The per-call deadline in seconds: ``value``, else ``TORCHKILN_REMOTE_TIMEOUT`` (settings.py), else 30 s."""
    if value is not None:
        return float(value)
    return settings.current().remote_timeout


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
        # One parse of the settings (it reads a signing-key file when one is configured), not one per value.
        config = settings.current() if timeout is None or lease_ttl is None else settings.Settings()
        self.timeout = float(timeout) if timeout is not None else config.remote_timeout
        self.lease_ttl = float(lease_ttl) if lease_ttl is not None else config.lease_ttl
        fs, prefix = open_filesystem(self.url, self.timeout, storage_options)
        #: every call this store makes, bounded by ``timeout`` (``objects.fs`` is the fsspec filesystem)
        self.objects = BoundedFS(fs, url=self.url, timeout=self.timeout, timeout_setting=ENV_TIMEOUT)
        self.root = f"{prefix}/{VERSION_DIR}"

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, timeout={self.timeout:g})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its arguments in the receiving process: a filesystem object carries sessions,
        # event loops and threads that must not cross a process boundary.
        return (_rebuild, (self.url, self.timeout, self.lease_ttl, self._options))

    # -- layout -----------------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        """The object path of ``key`` inside the filesystem."""
        check_key(key, where=self.objects.where(key))  # the same portable alphabet as the local store
        return f"{self.root}/{key}{ARTIFACT_SUFFIX}"

    def _claims_dir(self, key: str) -> str:
        check_key(key, where=self.objects.where(key))
        return f"{self.root}/leases/{key}"

    def _claim_path(self, key: str, token: str) -> str:
        return f"{self._claims_dir(key)}/{token}{LEASE_SUFFIX}"

    # -- Store protocol ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self.objects.get(self.path(key), key=key)

    def exists(self, key: str) -> bool:
        return self.objects.exists(self.path(key), key=key)

    def put(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        staging = f"{self.root}/tmp/{key}.{secrets.token_hex(8)}.part"  # used where a PUT is not atomic
        return self.objects.put_if_absent(path, data, staging=staging, key=key)

    def delete(self, key: str) -> bool:
        return self.objects.delete(self.path(key), key=key)

    def list(self) -> list[StoreEntry]:
        entries = []
        for info in self.objects.list(self.root):
            if not info.is_file or not info.name.endswith(ARTIFACT_SUFFIX):
                continue  # leases/ and tmp/ are folders; anything else in the prefix is not ours
            key = info.name[: -len(ARTIFACT_SUFFIX)]
            entries.append(StoreEntry(key=key, size=info.size, last_used=info.mtime))
        return entries

    def variants(self, key: str) -> builtins.list[str]:
        """One prefix listing (S3 ListObjectsV2 with a prefix), not a listing of the whole bucket."""
        check_key(key, where=self.objects.where(key))
        pattern = f"{self.root}/{key}.*{ARTIFACT_SUFFIX}"
        paths = self.objects.glob(pattern, key=key, what="list variants")
        names = (p.rstrip("/").rsplit("/", 1)[-1][: -len(ARTIFACT_SUFFIX)] for p in paths)
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
                where=f"{self.objects.where(key)} (host lock {lock_path})",
                fix="raise the lock timeout, or remove the lock file if no torchkiln process runs",
            ) from exc
        try:
            with self.lease(key, max(0.0, timeout - (time.monotonic() - start))):
                yield
        finally:
            host_lock.release()

    def lease(self, key: str, timeout: float) -> AbstractContextManager[None]:
        """The fleet-wide compile lease for ``key`` alone (lease.py); returns early once the artifact exists."""
        check_key(key, where=self.objects.where(key))
        return hold_lease(self, key, timeout)

    # -- Leasable: claims are objects <root>/leases/<key>/<token>.lease ---------------------------------
    def claims_where(self, key: str) -> str:
        return f"{self.url}/{VERSION_DIR}/leases/{key}/"

    def write_claim(self, key: str, token: str, body: bytes) -> None:
        self.objects.put(self._claim_path(key, token), body, key=key, what="lease write")

    def claim_exists(self, key: str, token: str) -> bool:
        return self.objects.exists(self._claim_path(key, token), key=key, what="lease check")

    def read_claims(self, key: str) -> dict[str, bytes]:
        listed = self.objects.names(self._claims_dir(key), key=key, what="lease list")
        paths = [path for path in listed if path.endswith(LEASE_SUFFIX)]
        bodies = self.objects.get_many(paths, key=key, what="lease read")
        return {path.rsplit("/", 1)[-1][: -len(LEASE_SUFFIX)]: body for path, body in bodies.items()}

    def delete_claim(self, key: str, token: str) -> None:
        self.objects.delete_quietly(self._claim_path(key, token))


def _rebuild(url: str, timeout: float, lease_ttl: float, options: dict[str, Any]) -> RemoteStore:
    return RemoteStore(url, timeout=timeout, lease_ttl=lease_ttl, **options)


def _host_lock_path(url: str, object_path: str) -> Path:
    """A lock file on this host for one remote object, under the user cache dir (XDG_CACHE_HOME honoured)."""
    import platformdirs

    digest = hashlib.sha256(f"{url}\0{object_path}".encode()).hexdigest()[:32]
    folder = Path(platformdirs.user_cache_dir("torchkiln")) / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"remote-{digest}.lock"
