"""TieredStore: the local cache in front of a remote one; what ``TORCHKILN_CACHE=s3://bucket/prefix`` opens.

Owns the policy between the two tiers: read-through (a remote hit is copied into the local tier, so the
next process on this machine loads from disk), write-through (a new artifact goes to both), and
degradation: a remote that fails, times out or is unreachable costs at most one bounded call (RemoteStore's
timeout), then one ``RemoteCacheWarning``, and the process carries on with the local tier alone. A remote
that failed is skipped by every TieredStore of this process for ``RETRY_AFTER`` seconds, so a fleet whose
bucket is down does not pay the timeout on every compile. Failures of the local tier propagate as
``StoreError`` (they are this machine's to fix).

``lock(key)`` takes the local per-key lock first (ranks of one host, RANK/LOCAL_RANK, queue there, so one
rank per host talks to the bucket) and then the fleet-wide lease (lease.py). A lease that stays busy past
the timeout gives a warning and lets the caller compile without it: bounded waits beat one compile per fleet.
"""

from __future__ import annotations

import builtins
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from torchkiln import progress
from torchkiln.errors import LeaseTimeoutError, RemoteCacheWarning, StoreError, warn
from torchkiln.store.base import Leasable, Store, StoreEntry, evict_lru
from torchkiln.store.lease import hold_lease

__all__ = [
    "RETRY_AFTER",
    "RemoteCacheWarning",
    "TieredStore",
    "open_tiered",
]  # RemoteCacheWarning: re-exported from errors

T = TypeVar("T")

#: Seconds a failed remote is left alone before a TieredStore of this process tries it again.
RETRY_AFTER = 300.0

# remote url -> time.monotonic() of its last failure; shared by every TieredStore in this process.
_FAILED: dict[str, float] = {}
_FAILED_LOCK = threading.Lock()


class TieredStore:
    """``local`` in front of ``remote``: read-through, write-through, remote failures degrade to local."""

    def __init__(self, local: Store, remote: Store) -> None:
        self.local = local
        self.remote = remote
        self.url = remote.url

    def __repr__(self) -> str:
        return f"TieredStore(local={self.local!r}, remote={self.remote!r})"

    # -- degradation -------------------------------------------------------------------------------------
    def remote_available(self) -> bool:
        """``False`` while the remote is in its back-off period after a failure."""
        with _FAILED_LOCK:
            failed_at = _FAILED.get(self.remote.url)
            if failed_at is None:
                return True
            if time.monotonic() - failed_at >= RETRY_AFTER:
                del _FAILED[self.remote.url]
                return True
            return False

    def _degrade(self, exc: StoreError, operation: str) -> None:
        with _FAILED_LOCK:
            first = self.remote.url not in _FAILED
            _FAILED[self.remote.url] = time.monotonic()
        if first:  # one warning per outage, not one per call
            warn(
                f"torchkiln: the remote cache {self.remote.url} failed during {operation} ({exc.what}); "
                f"using the local cache {self.local.url} only for the next {RETRY_AFTER:g} s. "
                "Artifacts built meanwhile stay local; `torchkiln push` uploads them later.",
                RemoteCacheWarning,
            )

    def _remote(self, operation: str, fn: Callable[[], T], fallback: T) -> T:
        if not self.remote_available():
            return fallback
        try:
            return fn()
        except StoreError as exc:
            self._degrade(exc, operation)
            return fallback

    # -- Store protocol ----------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        data = self.local.get(key)
        if data is not None:
            return data
        data = self._remote("get", lambda: self.remote.get(key), None)
        if data is not None:
            try:
                self.local.put(key, data)
            except StoreError as exc:
                # The bytes are good to use; only the copy for the next process is lost.
                warn(
                    f"torchkiln: could not keep a local copy of {key}: {exc.what}",
                    RemoteCacheWarning,
                )
        return data

    def put(self, key: str, data: bytes) -> bool:
        """Publish locally, then remotely. A key already in the local tier is left alone in both: another
        process on this host published it and writes it through itself; an artifact built while the remote
        was down stays local until ``torchkiln push`` uploads it."""
        if not self.local.put(key, data):
            return False
        self._remote("put", lambda: self.remote.put(key, data), False)
        # True even when another machine published the key first: both objects are whole, valid builds.
        return True

    def delete(self, key: str) -> bool:
        deleted_local = self.local.delete(key)
        deleted_remote = self._remote("delete", lambda: self.remote.delete(key), False)
        return deleted_local or deleted_remote

    def list(self) -> builtins.list[StoreEntry]:
        """Every key in either tier; for a key in both, the local size and the later use time."""
        no_entries: builtins.list[StoreEntry] = []
        merged = {e.key: e for e in self._remote("list", self.remote.list, no_entries)}
        for entry in self.local.list():
            other = merged.get(entry.key)
            last_used = max(entry.last_used, other.last_used) if other else entry.last_used
            merged[entry.key] = StoreEntry(key=entry.key, size=entry.size, last_used=last_used)
        return builtins.list(merged.values())

    def variants(self, key: str) -> builtins.list[str]:
        no_keys: builtins.list[str] = []
        remote = self._remote("list", lambda: self.remote.variants(key), no_keys)
        return sorted(set(self.local.variants(key)) | set(remote))

    def gc(self, max_size: int) -> builtins.list[str]:
        """LRU over the merged view, evicting from both tiers, so ``list()`` ends at most ``max_size`` bytes.

        The remote part needs delete rights; servers should hold read-only credentials and leave the bucket
        to a lifecycle rule (docs/FLEET.md). To trim only this machine's copy, gc the local root by path.
        """
        return evict_lru(self, max_size)

    def lock(self, key: str, timeout: float) -> AbstractContextManager[None]:
        return self._lock(key, timeout)

    @contextmanager
    def _lock(self, key: str, timeout: float) -> Iterator[None]:
        start = time.monotonic()
        with self.local.lock(key, timeout), ExitStack() as stack:
            if self.remote_available():
                remaining = max(0.0, timeout - (time.monotonic() - start))
                try:
                    # The lease alone, not RemoteStore.lock: the local tier's lock already serialises this host.
                    label = f"waiting for the fleet lease on {key} (another machine may be compiling it)"
                    with progress.activity(label, after=1.0):
                        if isinstance(self.remote, Leasable):
                            stack.enter_context(hold_lease(self.remote, key, remaining))
                        else:
                            stack.enter_context(self.remote.lock(key, remaining))
                except LeaseTimeoutError as exc:
                    warn(
                        f"torchkiln: {exc.what}; compiling here without the fleet lease",
                        RemoteCacheWarning,
                    )
                except StoreError as exc:
                    self._degrade(exc, "lock")
            yield


def open_tiered(url: str, *, local_root: Path | None = None, **storage_options: Any) -> TieredStore:
    """The store ``open_store`` returns for ``s3://``, ``gs://`` and other fsspec URLs.

    ``local_root`` defaults to the user cache dir (``$XDG_CACHE_HOME/torchkiln``); ``storage_options`` go to
    RemoteStore (``timeout``, ``lease_ttl``) and on to fsspec (``endpoint_url``, ``key``, ``secret``, ...).
    """
    from torchkiln.store import default_local_root
    from torchkiln.store.local import LocalStore
    from torchkiln.store.remote import RemoteStore

    local = LocalStore(local_root if local_root is not None else default_local_root())
    return TieredStore(local, RemoteStore(url, **storage_options))
