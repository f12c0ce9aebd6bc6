"""MemoryStore: the shared Store contract (in-process parts) plus its process-global, named buckets."""

from __future__ import annotations

import itertools
from pathlib import Path

from torchkiln.store import MemoryStore, open_store

from .contract import StoreContract

_names = itertools.count()


class TestMemoryStoreContract(StoreContract):
    shared_across_processes = False  # one process's memory: the multi-process tests skip
    lru_tick = 0.0  # a counter orders writes exactly

    def make_store(self, tmp_path: Path) -> MemoryStore:
        return MemoryStore(f"contract-{next(_names)}")


def test_same_name_same_bucket_other_name_isolated() -> None:
    a, b, other = MemoryStore("shared-x"), open_store("memory://shared-x"), MemoryStore("other-x")
    assert isinstance(b, MemoryStore) and b.url == "memory://shared-x"
    assert a.put("k-1", b"data")
    assert b.get("k-1") == b"data"
    assert other.get("k-1") is None
    MemoryStore.clear_all()
    assert MemoryStore("shared-x").get("k-1") is None


def test_put_copies_a_mutable_buffer() -> None:
    store = MemoryStore("copy-x")
    buf = bytearray(b"original")
    store.put("k-1", buf)  # type: ignore[arg-type]  # callers may hand in a bytearray
    buf[:] = b"changed!"
    assert store.get("k-1") == b"original"


def test_default_name() -> None:
    assert open_store("memory://").url == "memory://default"
