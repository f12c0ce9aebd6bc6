"""The fleet lease on the ``Leasable`` protocol alone (store/lease.py, store/base.py), and its timeout error.

The lease runs here on a small in-process ``Leasable`` (a dict of claims), which shows it needs nothing from a
backend but the protocol; tests/store/test_remote.py runs the same protocol on a real S3 server.
"""

from __future__ import annotations

import copy
import importlib
import json
import threading
import time
from pathlib import Path

import pytest

import torchkiln
from torchkiln.errors import LeaseTimeoutError, StoreError, TorchkilnError
from torchkiln.store import LocalStore, MemoryStore
from torchkiln.store import lease as lease_module
from torchkiln.store.base import Leasable
from torchkiln.store.lease import acquire_lease, hold_lease
from torchkiln.store.remote import RemoteStore


class DictLeasable:
    """Claims in a dict: exactly what the Leasable protocol asks for, nothing else."""

    def __init__(self, lease_ttl: float = 30.0) -> None:
        self.url = "dict://test"
        self.lease_ttl = lease_ttl
        self.published: set[str] = set()
        self.claims: dict[tuple[str, str], bytes] = {}
        self.mutex = threading.Lock()

    def exists(self, key: str) -> bool:
        return key in self.published

    def claims_where(self, key: str) -> str:
        return f"{self.url}/leases/{key}/"

    def write_claim(self, key: str, token: str, body: bytes) -> None:
        with self.mutex:
            self.claims[key, token] = body

    def claim_exists(self, key: str, token: str) -> bool:
        return (key, token) in self.claims

    def read_claims(self, key: str) -> dict[str, bytes]:
        with self.mutex:
            return {t: b for (k, t), b in self.claims.items() if k == key}

    def delete_claim(self, key: str, token: str) -> None:
        with self.mutex:
            self.claims.pop((key, token), None)


def test_stores_that_can_hold_the_lease_say_so(tmp_path: Path) -> None:
    assert isinstance(DictLeasable(), Leasable)
    assert isinstance(RemoteStore(f"file://{tmp_path}/bucket"), Leasable)
    assert not isinstance(MemoryStore("lease-test"), Leasable)
    assert not isinstance(LocalStore(tmp_path / "local"), Leasable)


def test_one_holder_then_the_next_and_a_timeout_with_typed_fields() -> None:
    store = DictLeasable()
    held = acquire_lease(store, "k-1", timeout=1, ttl=30)
    assert held is not None and list(store.read_claims("k-1")) == [held.token]
    t0 = time.monotonic()
    with pytest.raises(LeaseTimeoutError) as info:
        acquire_lease(store, "k-1", timeout=0.3, ttl=30)
    assert 0.25 < time.monotonic() - t0 < 3
    error = info.value
    assert error.timeout == 0.3 and error.ttl == 30 and error.holder and "pid=" in error.holder
    assert error.where == "dict://test/leases/k-1/"
    held.release()
    assert store.read_claims("k-1") == {}
    with hold_lease(store, "k-1", timeout=1):
        assert len(store.read_claims("k-1")) == 1
    assert store.read_claims("k-1") == {}


def test_published_artifact_means_nothing_to_hold_and_dead_claims_are_swept() -> None:
    store = DictLeasable()
    dead = {"token": "old", "owner": "gone", "expires_at": time.time() - 5}
    store.write_claim("k-2", "old", json.dumps(dead).encode())
    store.write_claim("k-2", "garbage", b"not json")  # unreadable claims count as dead
    held = acquire_lease(store, "k-2", timeout=1, ttl=30)
    assert held is not None and set(store.read_claims("k-2")) == {held.token}
    held.release()
    store.published.add("k-2")
    assert acquire_lease(store, "k-2", timeout=1, ttl=30) is None
    assert store.read_claims("k-2") == {}


def test_a_holder_renews_its_claim() -> None:
    store = DictLeasable()
    held = acquire_lease(store, "k-3", timeout=1, ttl=0.3)
    assert held is not None
    first = json.loads(store.read_claims("k-3")[held.token])
    time.sleep(0.5)
    renewed = json.loads(store.read_claims("k-3")[held.token])
    held.release()
    assert renewed["renewals"] >= 1 and renewed["expires_at"] > first["expires_at"]


def test_lease_timeout_error_is_a_store_error_and_a_timeout_error_and_pickles() -> None:
    error = LeaseTimeoutError(
        "timed out after 2 s waiting for the compile lease held by host pid=7",
        where="s3://bucket/p/v1/leases/k-1/",
        fix="raise the lock timeout",
        timeout=2.0,
        holder="host pid=7",
        ttl=60.0,
    )
    for cls in (StoreError, TorchkilnError, TimeoutError, OSError):
        assert isinstance(error, cls), cls
    text = str(error)
    assert "compile lease" in text and "s3://bucket/p/v1/leases/k-1/" in text and "How to fix: raise" in text
    # copy.deepcopy goes through __reduce__, the path pickle takes (pickle is lint-forbidden in tests); the
    # rebuilding function must be importable by name, as a pickle in another process finds it.
    clone = copy.deepcopy(error)
    assert type(clone) is LeaseTimeoutError and str(clone) == text
    assert (clone.what, clone.where, clone.fix) == (error.what, error.where, error.fix)
    assert (clone.timeout, clone.holder, clone.ttl) == (2.0, "host pid=7", 60.0)
    reducer = error.__reduce__()[0]
    assert getattr(importlib.import_module(reducer.__module__), reducer.__qualname__) is reducer
    # Callers that imported it from where it used to live keep working.
    assert lease_module.LeaseTimeoutError is LeaseTimeoutError is torchkiln.LeaseTimeoutError
    assert "LeaseTimeoutError" in torchkiln.__all__
