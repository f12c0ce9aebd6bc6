"""TieredStore, the fleet race and the push/pull CLI against a real S3 server (moto) on 127.0.0.1.

"Machines" are separate local cache roots sharing one bucket; "ranks" are processes sharing a root.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from torchkiln.store import LocalStore, open_store
from torchkiln.store import tiered as tiered_module
from torchkiln.store.base import Store
from torchkiln.store.remote import RemoteStore
from torchkiln.store.tiered import RemoteCacheWarning, TieredStore, open_tiered

from .conftest import fresh_bucket
from .contract import StoreContract
from .s3server import S3Server, aws_env, blackhole, fake_artifact, worker_command

#: Per-process budget the issue sets for a failing remote (warning + local compile), with the remote's
#: own per-call timeout set low below.
BUDGET_S = 30.0


@pytest.fixture(autouse=True)
def _fresh_outage_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiered_module, "_FAILED", {})


class TestTieredStoreContract(StoreContract):
    @pytest.fixture(autouse=True)
    def _bucket(self, s3_url: str) -> None:
        self.url = s3_url

    def make_store(self, tmp_path: Path) -> Store:
        return open_tiered(self.url, local_root=tmp_path / "local", timeout=15)


def test_open_store_gives_tiered_over_the_default_root(s3_url: str, tmp_path: Path) -> None:
    store = open_store(s3_url)
    assert isinstance(store, TieredStore)
    assert isinstance(store.local, LocalStore)
    assert store.local.root == tmp_path / "xdg" / "torchkiln"
    assert store.url == s3_url


def test_two_machines_share_a_bucket(s3_url: str, tmp_path: Path) -> None:
    builder = open_tiered(s3_url, local_root=tmp_path / "a")
    server = open_tiered(s3_url, local_root=tmp_path / "b")
    data = fake_artifact("shared-1")
    assert server.get("shared-1") is None
    assert builder.put("shared-1", data) is True
    assert RemoteStore(s3_url).get("shared-1") == data  # written through
    assert LocalStore(tmp_path / "b").get("shared-1") is None
    assert server.get("shared-1") == data  # read through ...
    assert LocalStore(tmp_path / "b").get("shared-1") == data  # ... and kept locally
    assert RemoteStore(s3_url).delete("shared-1") is True
    assert server.get("shared-1") == data  # served from the local copy now
    assert [e.key for e in server.list()] == ["shared-1"]


def _run_workers(
    url: str, tmp_path: Path, roots: list[Path], *, compile_s: float, env: dict[str, str]
) -> tuple[list[subprocess.Popen[bytes]], Path, list[Path]]:
    counter = tmp_path / "compiles.txt"
    counter.touch()
    outs, procs = [], []
    for i, root in enumerate(roots):
        out = tmp_path / f"result-{i}.json"
        ranks = {"RANK": str(i), "LOCAL_RANK": str(roots[:i].count(root))}
        cmd = worker_command(url=url, local=root, key="model-race", counter=counter, out=out, compile_s=compile_s)
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env, **ranks}))
        outs.append(out)
    return procs, counter, outs


def _results(procs: list[subprocess.Popen[bytes]], outs: list[Path], timeout: float) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    assert [p.returncode for p in procs] == [0] * len(procs)
    return [json.loads(out.read_text()) for out in outs]


def test_eight_processes_race_one_compile(s3_url: str, tmp_path: Path) -> None:
    """4 machines x 2 ranks on an empty bucket: exactly one compile, everyone gets the same bytes."""
    roots = [tmp_path / f"machine-{i // 2}" for i in range(8)]
    procs, counter, outs = _run_workers(s3_url, tmp_path, roots, compile_s=1.0, env={})
    results = _results(procs, outs, timeout=120)
    assert len(counter.read_text().splitlines()) == 1
    expected = hashlib.sha256(fake_artifact("model-race")).hexdigest()
    assert {r["sha256"] for r in results} == {expected}
    assert sum(bool(r["compiled"]) for r in results) == 1
    assert all(r["warnings"] == [] for r in results), [r["warnings"] for r in results]
    for root in set(roots):  # every machine kept a local copy
        assert LocalStore(root).get("model-race") == fake_artifact("model-race")


def test_server_killed_mid_run_everyone_finishes(tmp_path: Path, s3_env: None) -> None:
    """The bucket dies while the lease holder compiles: all 8 fall back to local and give the right bytes."""
    server = S3Server().start()
    try:
        url = f"s3://{fresh_bucket(server)}/cache"
        env = {**aws_env(server.endpoint), "TORCHKILN_REMOTE_TIMEOUT": "3"}
        roots = [tmp_path / f"machine-{i}" for i in range(8)]
        procs, counter, outs = _run_workers(url, tmp_path, roots, compile_s=3.0, env=env)
        deadline = time.monotonic() + 90
        while not counter.read_text():  # the lease holder has started compiling
            assert time.monotonic() < deadline, "nobody started compiling"
            assert all(p.poll() is None for p in procs)
            time.sleep(0.05)
        server.kill()
        results = _results(procs, outs, timeout=120)
    finally:
        server.stop()
    expected = hashlib.sha256(fake_artifact("model-race")).hexdigest()
    assert {r["sha256"] for r in results} == {expected}
    assert all(r["elapsed"] < BUDGET_S for r in results), [r["elapsed"] for r in results]
    for r in results:  # each process noticed once, then went on locally
        remote_warnings = [w for w in r["warnings"] if "RemoteCacheWarning" in w]
        assert len(remote_warnings) == 1, r["warnings"]


def test_silent_remote_degrades_with_one_warning(tmp_path: Path, s3_env: None) -> None:
    with blackhole() as endpoint:
        remote = RemoteStore("s3://silent-bucket/p", timeout=1.0, endpoint_url=endpoint, key="k", secret="s")
        store = TieredStore(LocalStore(tmp_path / "local"), remote)
        t0 = time.monotonic()
        with pytest.warns(RemoteCacheWarning, match="silent-bucket") as caught:
            assert store.get("k-1") is None
            with store.lock("k-1", timeout=5):
                assert store.put("k-1", b"built here") is True
            assert store.get("k-1") == b"built here"
            assert [e.key for e in store.list()] == ["k-1"]
        assert time.monotonic() - t0 < 3 * remote.timeout + 2
        assert len(caught) == 1
        assert not store.remote_available()


def test_busy_lease_warns_and_lets_the_caller_compile(s3_url: str, tmp_path: Path) -> None:
    holder = RemoteStore(s3_url, lease_ttl=30)
    store = open_tiered(s3_url, local_root=tmp_path / "other-machine")
    with holder.lease("busy-2", timeout=5):
        t0 = time.monotonic()
        with (
            pytest.warns(RemoteCacheWarning, match="without the fleet lease"),
            store.lock("busy-2", timeout=0.5),
        ):
            pass
        assert time.monotonic() - t0 < 5
    assert store.remote_available()  # a busy lease is not an outage


# -- CLI: push / pull ---------------------------------------------------------------------------------------


def _artifact(name: str) -> bytes:
    from torchkiln.artifact import encode

    return encode({"name": name}, {"payload": name.encode() * 100})


def test_push_then_pull_on_another_machine(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchkiln.cli import main

    monkeypatch.delenv("TORCHKILN_SIGNING_KEY", raising=False)
    monkeypatch.delenv("TORCHKILN_CACHE", raising=False)
    builder, server = tmp_path / "builder", tmp_path / "server"
    LocalStore(builder).put("good-1", _artifact("good"))
    LocalStore(builder).put("good-2", _artifact("good2"))
    assert main(["push", "--all", "--to", s3_url, "--cache", str(builder)]) == 0
    assert "2 copied" in capsys.readouterr().out
    assert main(["push", "good-1", "--to", s3_url, "--cache", str(builder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"] == [{"key": "good-1", "bytes": len(_artifact("good")), "status": "exists"}]

    assert main(["pull", "good-2", "--from", s3_url, "--cache", str(server)]) == 0
    assert LocalStore(server).get("good-2") == _artifact("good2")
    assert main(["pull", "--all", "--from", s3_url, "--cache", str(server)]) == 0
    assert "1 copied, 1 exists" in capsys.readouterr().out.splitlines()[-1]

    assert main(["pull", "absent-1", "--from", s3_url, "--cache", str(server)]) == 1
    assert main(["pull", "--from", s3_url, "--cache", str(server)]) == 2  # neither KEY nor --all


def test_push_refuses_a_corrupt_artifact(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from torchkiln.cli import main

    monkeypatch.delenv("TORCHKILN_SIGNING_KEY", raising=False)
    data = bytearray(_artifact("bad"))
    data[-1] ^= 0xFF
    LocalStore(tmp_path / "b").put("bad-1", bytes(data))
    assert main(["push", "bad-1", "--to", s3_url, "--cache", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().out.startswith("invalid  bad-1 (")
    assert RemoteStore(s3_url).get("bad-1") is None
