"""RemoteStore and the fleet lease against a real S3 server (moto, standalone, on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from torchkiln.errors import ConfigError, StoreError
from torchkiln.store.base import Store
from torchkiln.store.lease import LeaseTimeoutError
from torchkiln.store.remote import RemoteStore, remote_timeout

from .contract import StoreContract
from .s3server import blackhole, free_port, hold_lease_command


class TestRemoteStoreContract(StoreContract):
    records_reads = False  # S3 keeps no read times: LRU is by write time
    lru_tick = 1.1  # S3 LastModified has one-second resolution

    @pytest.fixture(autouse=True)
    def _bucket(self, s3_url: str) -> None:
        self.url = s3_url

    def make_store(self, tmp_path: Path) -> Store:
        return RemoteStore(self.url, timeout=15)


def test_layout_and_listing_ignore_leases(s3_url: str) -> None:
    store = RemoteStore(s3_url)
    assert store.put("model-1", b"abc") is True
    with store.lock("model-2", timeout=5):
        claims = store.objects.fs.ls(f"{store.root}/leases/model-2")
        assert len(claims) == 1 and claims[0].endswith(".lease")
        assert [e.key for e in store.list()] == ["model-1"]
    bucket_path = s3_url.removeprefix("s3://")
    assert store.objects.fs.cat_file(f"{bucket_path}/v1/model-1.tkln") == b"abc"
    assert store.objects.fs.glob(f"{store.root}/leases/model-2/*") == []  # released


def test_timeout_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHKILN_REMOTE_TIMEOUT", raising=False)
    assert remote_timeout() == 30.0
    monkeypatch.setenv("TORCHKILN_REMOTE_TIMEOUT", "2.5")
    assert remote_timeout() == 2.5
    assert remote_timeout(7) == 7.0
    monkeypatch.setenv("TORCHKILN_REMOTE_TIMEOUT", "soon")
    # A bad value is a ConfigError (settings.py: one type for every bad setting), not a store outage.
    with pytest.raises(ConfigError, match="TORCHKILN_REMOTE_TIMEOUT") as info:
        remote_timeout()
    assert info.value.fix


@pytest.mark.parametrize("kind", ["no-answer", "refused"])
def test_unreachable_remote_fails_within_the_timeout(s3_env: None, kind: str) -> None:
    with blackhole() as silent:
        endpoint = silent if kind == "no-answer" else f"http://127.0.0.1:{free_port()}"
        store = RemoteStore("s3://bucket-x/p", timeout=1.0, endpoint_url=endpoint, key="k", secret="s")
        for call in (lambda: store.get("k-1"), lambda: store.put("k-1", b"x")):
            t0 = time.monotonic()
            with pytest.raises(StoreError, match="remote") as info:
                call()
            assert time.monotonic() - t0 < 2.5
            assert isinstance(info.value, OSError)
            assert "TORCHKILN_REMOTE_TIMEOUT" in (info.value.fix or "")


def test_missing_backend_gives_install_hint(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['s3fs'] = None\n"
        "from torchkiln.store.remote import RemoteStore\n"
        "from torchkiln.errors import StoreError\n"
        "try:\n    RemoteStore('s3://b/p')\n"
        "except StoreError as exc:\n    print('FIX:', exc.fix)\n"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    cmd = [sys.executable, "-c", code]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=60)
    assert "FIX: pip install 'torchkiln[s3]'" in out.stdout, out.stderr
    with pytest.raises(StoreError, match="unknown storage protocol"):
        RemoteStore("nosuchproto://x/y")


def test_lease_excludes_and_hands_over(s3_url: str) -> None:
    store = RemoteStore(s3_url, lease_ttl=30)
    with store.lease("lk-1", timeout=5):
        t0 = time.monotonic()
        with pytest.raises(LeaseTimeoutError, match="lk-1"), store.lease("lk-1", timeout=0.5):
            pass
        assert 0.4 < time.monotonic() - t0 < 5
    t0 = time.monotonic()
    with store.lease("lk-1", timeout=5):
        assert time.monotonic() - t0 < 2


def test_waiter_returns_once_the_artifact_is_published(s3_url: str) -> None:
    store = RemoteStore(s3_url, lease_ttl=30)
    waited: dict[str, float] = {}
    published = threading.Event()

    def waiter() -> None:
        t0 = time.monotonic()
        with RemoteStore(s3_url).lease("pub-1", timeout=20):
            waited["elapsed"] = time.monotonic() - t0
            waited["after_publish"] = published.is_set()

    with store.lease("pub-1", timeout=5):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.5)
        assert store.put("pub-1", b"built") is True
        published.set()
        thread.join(10)  # the waiter must not need the holder's release
        assert waited.get("after_publish") is True, waited
    assert waited["elapsed"] < 6


def test_dead_holder_lease_expires_and_another_takes_over(s3_url: str, tmp_path: Path) -> None:
    ttl = 1.5
    ready = tmp_path / "ready"
    holder = subprocess.Popen(hold_lease_command(url=s3_url, key="dead-1", ready=ready, ttl=ttl))
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None, "the lease holder died early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        store = RemoteStore(s3_url, lease_ttl=ttl)
        time.sleep(ttl)  # the live holder renews: its claim outlives one ttl
        with pytest.raises(LeaseTimeoutError, match="dead-1"), store.lease("dead-1", timeout=0.5):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        with store.lease("dead-1", timeout=20):
            took = time.monotonic() - t0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert took <= ttl + 3.0, took


def test_other_fsspec_backends_publish_through_a_temp_object(tmp_path: Path, s3_env: None) -> None:
    """file:// stands in for gs://, az://...: no atomic PUT, so upload to tmp/ and move into place."""
    store = RemoteStore(f"file://{tmp_path}/bucket/prefix")
    assert store.get("m-1") is None
    assert store.put("m-1", b"whole") is True
    assert store.put("m-1", b"again") is False
    assert (tmp_path / "bucket/prefix/v1/m-1.tkln").read_bytes() == b"whole"
    assert list((tmp_path / "bucket/prefix/v1/tmp").iterdir()) == []
    with store.lock("m-2", timeout=5):
        assert len(list((tmp_path / "bucket/prefix/v1/leases/m-2").iterdir())) == 1
        with pytest.raises(LeaseTimeoutError), RemoteStore(store.url).lease("m-2", timeout=0.3):
            pass
    assert [e.key for e in store.list()] == ["m-1"]
    assert store.gc(0) == ["m-1"]
