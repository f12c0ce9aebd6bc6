"""The contract every Store backend passes (fsspec style: one suite, mixed into each backend's tests).

Usage, in ``tests/store/test_<backend>.py``::

    from .contract import StoreContract

    class TestMyStore(StoreContract):
        shared_across_processes = True   # False for stores that live in one process (memory://)
        records_reads = True             # False where get() cannot refresh last_used (plain S3)
        lru_tick = 0.05                  # seconds between writes so last_used orders them (S3: ~1.1)

        def make_store(self, tmp_path):
            return MyStore(...)

A shared backend's store object must pickle: the multi-process tests hand it to ``spawn``-ed children (spawn,
not fork: forking a process with threads, e.g. a test S3 server, is unsafe, and deprecated from Python 3.12).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torchkiln.errors import StoreError
from torchkiln.store.base import Store, variant_key

__all__ = ["BAD_KEYS", "StoreContract", "payload"]

#: Keys every backend must refuse with StoreError: empty, hidden, path-like, too long, outside the alphabet.
BAD_KEYS = ["", ".hidden", "..", "a/b", "../escape", "a\\b", "a" * 201, "sp ace", "nul\x00", "ünï", "k\n"]

_SPAWN = multiprocessing.get_context("spawn")
# Generous bounds: these tests share 2 cores with compiles run by the rest of the suite.
_CHILD_TIMEOUT_S = 60.0


def payload(seed: int, size: int) -> bytes:
    """Deterministic bytes, distinct per seed, cheap to make and to check (every byte value occurs)."""
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest() + bytes(range(256))
    return (block * (size // len(block) + 1))[:size]


# -- children of the multi-process tests (module level, so spawn can import them) ------------------


def _racing_writer(*, store: Store, key: str, seed: int, size: int, start: Any, results: Any) -> None:
    start.wait(_CHILD_TIMEOUT_S)
    results.put((seed, store.put(key, payload(seed, size))))


def _polling_reader(*, store: Store, key: str, seeds: list[int], size: int, start: Any, results: Any) -> None:
    """Reads while writers race; every non-None read must be one writer's complete payload."""
    expected = {payload(s, size) for s in seeds}
    start.wait(_CHILD_TIMEOUT_S)
    deadline = time.monotonic() + _CHILD_TIMEOUT_S
    reads = bad = 0
    while time.monotonic() < deadline:
        data = store.get(key)
        reads += 1
        if data is not None:
            bad += data not in expected
            break
    results.put(("reader", reads, bad))


def _locked_appender(store: Store, key: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        with store.lock(key, timeout=_CHILD_TIMEOUT_S):
            with open(log, "a") as f:
                f.write(f"enter {os.getpid()}\n")
            time.sleep(0.02)
            with open(log, "a") as f:
                f.write(f"exit {os.getpid()}\n")


def _lock_prober(store: Store, key: str, results: Any, proceed: Any) -> None:
    t0 = time.monotonic()
    try:
        with store.lock(key, timeout=0.3):
            results.put(("acquired-while-held", time.monotonic() - t0))
    except StoreError:
        results.put(("timed-out", time.monotonic() - t0))
    proceed.wait(_CHILD_TIMEOUT_S)
    t0 = time.monotonic()
    with store.lock(key, timeout=_CHILD_TIMEOUT_S):
        results.put(("acquired", time.monotonic() - t0))


def _join_all(procs: list[Any]) -> None:
    for proc in procs:
        proc.join(_CHILD_TIMEOUT_S)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        assert proc.exitcode == 0, f"child {proc.name} exited with {proc.exitcode}"


class StoreContract:
    """Mix into a test class and implement ``make_store``."""

    shared_across_processes = True
    records_reads = True
    lru_tick = 0.05

    def make_store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return self.make_store(tmp_path)

    def _needs_shared(self) -> None:
        if not self.shared_across_processes:
            pytest.skip("this backend lives in one process")

    # -- basic contract ----------------------------------------------------------------------------

    def test_is_a_store(self, store: Store) -> None:
        assert isinstance(store, Store)
        assert isinstance(store.url, str)
        assert store.url

    def test_round_trip(self, store: Store) -> None:
        data = payload(1, 3 * 1024 * 1024 + 7)
        assert store.put("model-abc", data) is True
        assert store.get("model-abc") == data

    def test_variants_coexist_and_are_listed(self, store: Store) -> None:
        key = "model-" + "a" * 64
        first, second = variant_key(key, "0123456789abcdef" * 4), variant_key(key, "fedcba9876543210" * 4)
        assert store.put(key, b"primary") is True
        assert store.variants(key) == []
        assert store.put(second, b"v2") is True
        assert store.put(first, b"v1") is True
        assert store.put("model-" + "a" * 63 + "b", b"other key") is True  # a different key is no variant
        assert store.put(key + "x", b"x") is True  # nor a key that merely starts with it
        assert store.variants(key) == sorted([first, second])
        assert (store.get(key), store.get(first), store.get(second)) == (b"primary", b"v1", b"v2")
        assert {first, second, key} <= {e.key for e in store.list()}

    def test_write_once(self, store: Store) -> None:
        assert store.put("k-1", b"first") is True
        assert store.put("k-1", b"second, longer") is False
        assert store.get("k-1") == b"first"
        assert [(e.key, e.size) for e in store.list()] == [("k-1", 5)]

    def test_absent_key(self, store: Store) -> None:
        assert store.get("nothing-here") is None
        assert store.delete("nothing-here") is False
        assert store.list() == []
        assert store.gc(0) == []

    def test_list_sizes(self, store: Store) -> None:
        t0 = time.time()
        sizes = {"a-1": 1, "b-2": 1000, "c-3": 100_000}
        for i, (key, size) in enumerate(sizes.items()):
            store.put(key, payload(i, size))
        entries = store.list()
        assert {e.key: e.size for e in entries} == sizes
        for entry in entries:  # a remote clock may differ from ours by a little
            assert t0 - 120 <= entry.last_used <= time.time() + 120

    def test_delete(self, store: Store) -> None:
        store.put("gone-1", b"x" * 10)
        store.put("kept-1", b"y" * 10)
        assert store.delete("gone-1") is True
        assert store.get("gone-1") is None
        assert [e.key for e in store.list()] == ["kept-1"]
        assert store.delete("gone-1") is False
        assert store.put("gone-1", b"again") is True  # write-once is about an existing object, not history
        assert store.get("gone-1") == b"again"

    def test_valid_key_edges(self, store: Store) -> None:
        for key in ["a" * 200, "A.b_c-9", "x", "name-" + "0" * 64, "trailing."]:
            assert store.put(key, key.encode()) is True
            assert store.get(key) == key.encode()

    @pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
    def test_bad_key(self, store: Store, key: str) -> None:
        for call in (
            lambda: store.get(key),
            lambda: store.put(key, b"x"),
            lambda: store.delete(key),
            lambda: store.lock(key, 1).__enter__(),
        ):
            with pytest.raises(StoreError, match="invalid cache key") as info:
                call()
            assert isinstance(info.value, OSError)
            assert info.value.fix
        assert store.list() == []

    def test_gc_evicts_least_recently_used_first(self, store: Store) -> None:
        for key in ("old-1", "mid-2", "new-3"):
            store.put(key, payload(0, 100))
            time.sleep(self.lru_tick)
        if self.records_reads:
            assert store.get("old-1") is not None  # a read makes it the most recently used
            order = ["mid-2", "new-3", "old-1"]
        else:
            order = ["old-1", "mid-2", "new-3"]
        assert store.gc(10_000) == []
        assert store.gc(300) == []  # exactly at the limit: nothing to do
        assert store.gc(250) == order[:1]
        assert store.gc(100) == order[1:2]
        assert [e.key for e in store.list()] == order[2:]
        assert store.gc(0) == order[2:]
        assert store.list() == []

    # -- locks -------------------------------------------------------------------------------------

    def test_lock_is_released_on_exit_and_on_error(self, store: Store) -> None:
        with store.lock("lk-1", timeout=5):
            pass
        with pytest.raises(RuntimeError, match="boom"), store.lock("lk-1", timeout=5):
            raise RuntimeError("boom")
        t0 = time.monotonic()
        with store.lock("lk-1", timeout=5):
            pass
        assert time.monotonic() - t0 < 3

    def test_lock_timeout_raises_store_error(self, store: Store) -> None:
        outcome: dict[str, Any] = {}

        def waiter() -> None:
            t0 = time.monotonic()
            try:
                with store.lock("busy-1", timeout=0.3):
                    outcome["result"] = "acquired"
            except StoreError as exc:
                outcome["result"] = exc
            outcome["elapsed"] = time.monotonic() - t0

        with store.lock("busy-1", timeout=5):
            with store.lock("other-1", timeout=1):  # other keys are independent
                pass
            thread = threading.Thread(target=waiter)
            thread.start()
            thread.join(_CHILD_TIMEOUT_S)
        assert isinstance(outcome["result"], StoreError), outcome
        assert "busy-1" in str(outcome["result"])
        assert 0.25 <= outcome["elapsed"] < 30
        with store.lock("busy-1", timeout=5):  # and the holder's release lets the next one in
            pass

    # -- several processes sharing one store -------------------------------------------------------

    def test_concurrent_writers_of_one_key(self, store: Store) -> None:
        self._needs_shared()
        seeds, size = [11, 12, 13], 4 * 1024 * 1024
        start, results = _SPAWN.Event(), _SPAWN.Queue()
        common = {"store": store, "key": "race-1", "size": size, "start": start, "results": results}
        procs = [_SPAWN.Process(target=_racing_writer, kwargs={**common, "seed": s}) for s in seeds]
        procs.append(_SPAWN.Process(target=_polling_reader, kwargs={**common, "seeds": seeds}))
        for proc in procs:
            proc.start()
        start.set()
        got = [results.get(timeout=_CHILD_TIMEOUT_S) for _ in procs]
        _join_all(procs)
        reader = next(r for r in got if r[0] == "reader")
        assert reader[2] == 0, "a reader saw a partial or foreign object"
        winners = [seed for seed, won in (r for r in got if r[0] != "reader") if won]
        assert len(winners) == 1, got
        assert store.get("race-1") == payload(winners[0], size)
        assert [(e.key, e.size) for e in store.list()] == [("race-1", size)]

    def test_lock_excludes_other_processes(self, store: Store, tmp_path: Path) -> None:
        self._needs_shared()
        log = tmp_path / "lock.log"
        procs = [_SPAWN.Process(target=_locked_appender, args=(store, "mutex-1", str(log), 3)) for _ in range(3)]
        for proc in procs:
            proc.start()
        _join_all(procs)
        lines = log.read_text().splitlines()
        assert len(lines) == 18
        for enter, leave in zip(lines[::2], lines[1::2], strict=True):
            assert enter.startswith("enter ") and leave == "exit " + enter.split()[1], lines

    def test_lock_timeout_across_processes(self, store: Store) -> None:
        self._needs_shared()
        results, proceed = _SPAWN.Queue(), _SPAWN.Event()
        proc = _SPAWN.Process(target=_lock_prober, args=(store, "held-1", results, proceed))
        with store.lock("held-1", timeout=5):
            proc.start()
            first = results.get(timeout=_CHILD_TIMEOUT_S)
        proceed.set()
        second = results.get(timeout=_CHILD_TIMEOUT_S)
        _join_all([proc])
        assert first[0] == "timed-out" and 0.25 <= first[1] < 30, first
        assert second[0] == "acquired", second
