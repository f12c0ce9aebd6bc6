"""The in-process store: ``memory://name``, for tests and for callers that want a cache that dies with them.

This module owns a process-global table of named buckets (like fsspec's memory filesystem: two
``MemoryStore("x")`` objects in one process see the same artifacts) and the same contract as every other
store: write-once ``put``, LRU ``gc``, per-key ``lock``. Nothing is shared across processes; ``lock`` is a
per-key threading lock, so it serializes threads of this process only.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import itertools
import threading
import time
from collections.abc import Iterator

from torchkiln.errors import StoreError
from torchkiln.store.base import StoreEntry, check_key, is_variant_of

__all__ = ["MemoryStore"]


@dataclasses.dataclass
class _Object:
    data: bytes
    last_used: float
    #: a global counter that breaks ties between equal clock readings, so LRU order is exact
    order: int


@dataclasses.dataclass
class _Bucket:
    objects: dict[str, _Object] = dataclasses.field(default_factory=dict)
    key_locks: dict[str, threading.Lock] = dataclasses.field(default_factory=dict)
    mutex: threading.Lock = dataclasses.field(default_factory=threading.Lock)


_BUCKETS: dict[str, _Bucket] = {}
_BUCKETS_MUTEX = threading.Lock()
_ORDER = itertools.count()


class MemoryStore:
    """A named bucket in this process's memory. ``MemoryStore.clear_all()`` empties every bucket."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.url = f"memory://{name}"
        with _BUCKETS_MUTEX:
            self._bucket = _BUCKETS.setdefault(name, _Bucket())

    def __repr__(self) -> str:
        return f"MemoryStore({self.name!r})"

    @staticmethod
    def clear_all() -> None:
        with _BUCKETS_MUTEX:
            _BUCKETS.clear()

    def _where(self, key: str) -> str:
        return f"{self.url} key={key}"

    def get(self, key: str) -> bytes | None:
        check_key(key, where=self._where(key))
        with self._bucket.mutex:
            obj = self._bucket.objects.get(key)
            if obj is None:
                return None
            obj.last_used, obj.order = time.time(), next(_ORDER)
            return obj.data

    def put(self, key: str, data: bytes) -> bool:
        check_key(key, where=self._where(key))
        # bytes() copies a mutable buffer: a caller that reuses its bytearray cannot change a stored object.
        frozen = bytes(data)
        with self._bucket.mutex:
            if key in self._bucket.objects:
                return False
            self._bucket.objects[key] = _Object(frozen, time.time(), next(_ORDER))
            return True

    def delete(self, key: str) -> bool:
        check_key(key, where=self._where(key))
        with self._bucket.mutex:
            return self._bucket.objects.pop(key, None) is not None

    def list(self) -> builtins.list[StoreEntry]:
        with self._bucket.mutex:
            return [StoreEntry(key, len(o.data), o.last_used) for key, o in self._bucket.objects.items()]

    def variants(self, key: str) -> builtins.list[str]:
        check_key(key, where=self._where(key))
        with self._bucket.mutex:
            return sorted(k for k in self._bucket.objects if is_variant_of(k, key))

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        """A per-key threading lock (not reentrant); ``timeout`` < 0 waits forever."""
        check_key(key, where=self._where(key))
        with self._bucket.mutex:
            key_lock = self._bucket.key_locks.setdefault(key, threading.Lock())
        if not key_lock.acquire(timeout=-1 if timeout < 0 else timeout):
            raise StoreError(
                f"timed out after {timeout:g} s waiting for the compile lock",
                where=self._where(key),
                fix="another thread is compiling this key; wait for it, or pass a longer timeout",
            )
        try:
            yield
        finally:
            key_lock.release()

    def gc(self, max_size: int) -> builtins.list[str]:
        if max_size < 0:
            raise StoreError(f"gc max_size must be >= 0, got {max_size}", where=self.url, fix="pass a size")
        with self._bucket.mutex:
            objects = self._bucket.objects
            total = sum(len(o.data) for o in objects.values())
            evicted: builtins.list[str] = []
            for key, obj in sorted(objects.items(), key=lambda item: item[1].order):
                if total <= max_size:
                    break
                del objects[key]
                total -= len(obj.data)
                evicted.append(key)
            return evicted
