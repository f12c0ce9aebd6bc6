"""The Store protocol: what every cache backend (local, memory, remote, tiered) must do.

A store maps a key (``<name>-<sha256>``, see cache_key.py) to the bytes of one artifact. It knows nothing about
the artifact format: integrity is artifact.py's job, so a store may hand back corrupt bytes and the caller
turns that into a miss. The contract, enforced for every backend by tests/store/contract.py:

- ``get`` returns the complete bytes of a published artifact or ``None``; never a partial object.
- ``put`` is atomic and write-once: a reader sees the old state or the whole new object, and a second ``put``
  of an existing key leaves the first object in place and returns ``False``.
- ``lock(key)`` is held by one compiler per key across every process that shares the store; waiters get the
  lock once the holder releases or dies, or ``StoreError`` once ``timeout`` seconds have passed.
- ``variants(key)`` lists the other artifacts published for the same key (``<key>.<16 hex>``): builds whose
  validation facts differ (an inlined helper module of another version, a module global with another value, a
  CPU with other extensions). They coexist; a load picks the one that fits, ``gc`` ages them out like any other.
- Every failure is a ``StoreError`` (an ``OSError``) that names the store and the key.

A store that can also carry the fleet-wide compile lease (lease.py) offers ``Leasable``: claim objects beside
its artifacts. The lease depends on that protocol only, never on a backend, so any store with read-after-write
consistent listings can hold it.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from torchkiln.errors import StoreError

__all__ = [
    "ARTIFACT_SUFFIX",
    "INSTALL_HINTS",
    "KEY_RE",
    "Leasable",
    "Store",
    "StoreEntry",
    "check_key",
    "evict_lru",
    "is_variant_of",
    "variant_key",
]

#: Keys are file names locally and object names remotely: a portable alphabet, no path separators.
KEY_RE = re.compile(r"[A-Za-z0-9._-]{1,200}")

#: fsspec protocol -> what to install when its backend package is missing (open_store and RemoteStore say it).
INSTALL_HINTS = {
    "s3": "pip install 'torchkiln[s3]'",
    "s3a": "pip install 'torchkiln[s3]'",
    "gs": "pip install gcsfs",
    "gcs": "pip install gcsfs",
    "az": "pip install adlfs",
    "abfs": "pip install adlfs",
    "abfss": "pip install adlfs",
}

#: Every artifact object ends in this suffix under the store's versioned root (``<root>/v1/<key>.tkln``).
ARTIFACT_SUFFIX = ".tkln"


_VARIANT_SUFFIX = re.compile(r"\.[0-9a-f]{16}")


def variant_key(key: str, digest: str) -> str:
    """The store key of a variant of ``key``: ``<key>.<first 16 hex of the artifact's sha256>`` (content-addressed,
    so two machines publishing the same build collide harmlessly and different builds never do)."""
    return f"{key}.{digest[:16]}"


def is_variant_of(candidate: str, key: str) -> bool:
    return candidate.startswith(key) and bool(_VARIANT_SUFFIX.fullmatch(candidate[len(key) :]))


@dataclasses.dataclass(frozen=True)
class StoreEntry:
    """One stored artifact as listed by ``Store.list()``."""

    key: str
    size: int
    #: seconds since the epoch of the last write, or of the last read where the backend records reads
    last_used: float


@runtime_checkable
class Store(Protocol):
    """A place artifacts live. ``url`` is how a user names it (``/dir``, ``s3://b/p``, ``memory://x``)."""

    url: str

    def get(self, key: str) -> bytes | None:
        """The artifact's bytes, or ``None`` when the key is absent."""
        ...

    def put(self, key: str, data: bytes) -> bool:
        """Publish atomically; ``False`` (and no change) if the key already exists."""
        ...

    def delete(self, key: str) -> bool:
        """Remove the key; ``False`` if it was absent."""
        ...

    def list(self) -> builtins.list[StoreEntry]:
        """Every stored artifact, in no particular order."""
        ...

    def variants(self, key: str) -> builtins.list[str]:
        """The store keys of ``key``'s variants (``variant_key``), sorted; not ``key`` itself."""
        ...

    def lock(self, key: str, timeout: float) -> AbstractContextManager[None]:
        """One holder per key across processes (and machines, for shared stores)."""
        ...

    def gc(self, max_size: int) -> builtins.list[str]:
        """Evict least recently used artifacts until the total size is at most ``max_size`` bytes."""
        ...


@runtime_checkable
class Leasable(Protocol):
    """What a store offers so that lease.py can run the fleet-wide compile lease on it (RemoteStore does).

    A claim is a small object beside the store's artifacts, named by the artifact key and a random token; its
    body is lease.py's business. Listings must be read-after-write consistent (a claim just written is listed).
    Every call is bounded by the store's own timeout and fails with ``StoreError``, except ``delete_claim``: it
    is best effort, because a claim left behind expires on its own after ``lease_ttl`` seconds.
    """

    url: str
    #: seconds a claim stays valid without renewal (the holder renews every third of it)
    lease_ttl: float

    def exists(self, key: str) -> bool:
        """The artifact for ``key`` is published (then there is nothing to compile)."""
        ...

    def claims_where(self, key: str) -> str:
        """Where ``key``'s claims live, for messages (a URL a user can look at)."""
        ...

    def write_claim(self, key: str, token: str, body: bytes) -> None:
        """Create or overwrite the claim ``token`` of ``key``."""
        ...

    def claim_exists(self, key: str, token: str) -> bool: ...

    def read_claims(self, key: str) -> dict[str, bytes]:
        """token -> body of every claim of ``key``; a claim deleted meanwhile is simply absent."""
        ...

    def delete_claim(self, key: str, token: str) -> None:
        """Remove the claim if it is there; never raises."""
        ...


def iter_keys(store: Store) -> Iterator[str]:
    """Every key in ``store`` (a convenience for the CLI)."""
    for entry in store.list():
        yield entry.key


def evict_lru(store: Store, max_size: int) -> builtins.list[str]:
    """Delete ``store``'s least recently used artifacts until the rest total at most ``max_size`` bytes.

    The shared ``gc`` of the stores that can only list and delete (remote, tiered); the local store has its own,
    which also protects files read during its scan.
    """
    if max_size < 0:
        raise StoreError(f"gc max_size must be >= 0, got {max_size}", where=store.url, fix="pass a size")
    entries = sorted(store.list(), key=lambda e: (e.last_used, e.key))
    total = sum(e.size for e in entries)
    evicted: builtins.list[str] = []
    for entry in entries:
        if total <= max_size:
            break
        if store.delete(entry.key):
            evicted.append(entry.key)
        total -= entry.size
    return evicted


def check_key(key: object, *, where: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ``StoreError``.

    Keys are file names here and object names remotely, so they are restricted to a portable alphabet with no
    path separators; a leading dot is refused so a key can never name a hidden temp file, ``.`` or ``..``.
    """
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or key.startswith("."):
        raise StoreError(
            f"invalid cache key {key!r}: a key is 1-200 characters from A-Z a-z 0-9 . _ - "
            "and does not start with a dot",
            where=where,
            fix="build keys with torchkiln.cache_key (they look like '<name>-<sha256>')",
        )
    return key
