"""The CLI on a tiered cache (issue 11): each tier reported by itself, looking never copies, a dead bucket fails."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from torchkiln import artifact
from torchkiln.cache_key import CacheKey, KeyPart, _combine
from torchkiln.cli import main
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader
from torchkiln.store import LocalStore, default_local_root
from torchkiln.store.remote import RemoteStore

from .s3server import blackhole


def _artifact(name: str) -> tuple[str, bytes]:
    parts = (KeyPart.of("format", 1), KeyPart.of("target", {"qualname": f"m.{name}"}))
    key = CacheKey(_combine(name, parts), parts)
    header = ArtifactHeader(
        torchkiln_version="0",
        created_at="2026-12-02T00:00:00+00:00",
        target=f"m.{name}",
        is_module=True,
        device_type="cpu",
        cache_key=key,
        fingerprint=Fingerprint.current(),
    )
    return key.key, artifact.encode(header.to_dict(), {"payload": b"not a pickle, never loaded"})


def cli(*argv: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    text = out.getvalue()
    return rc, json.loads(text) if "--json" in argv and text.strip() else text, err.getvalue()


@pytest.fixture
def bucket(s3_url: str) -> tuple[str, str, str]:
    """An s3:// cache whose bucket holds two artifacts and whose local tier holds a copy of the first only."""
    remote = RemoteStore(s3_url)
    first, data1 = _artifact("First")
    second, data2 = _artifact("Second")
    assert remote.put(first, data1) and remote.put(second, data2)
    assert LocalStore(default_local_root()).put(first, data1)
    return s3_url, first, second


def test_ls_shows_each_tier_and_copies_nothing(bucket: tuple[str, str, str]) -> None:
    url, first, second = bucket
    rc, report, _ = cli("ls", "--cache", url, "--json")
    assert rc == 0, report
    assert [(t["name"], t["artifacts"]) for t in report["tiers"]] == [("local", 1), ("remote", 2)]
    assert sorted((r["tier"], r["key"]) for r in report["artifacts"]) == sorted(
        [("local", first), ("remote", first), ("remote", second)]
    )
    assert all(r["target"] for r in report["artifacts"])  # headers read from each tier itself
    for argv in (("ls",), ("verify",), ("inspect", second), ("ls", "--tier", "remote")):
        assert cli(*argv, "--cache", url)[0] == 0, argv
    # Looking (ls, verify, inspect) never copies a bucket object into the local tier.
    assert [e.key for e in LocalStore(default_local_root()).list()] == [first]


def test_verify_reports_the_tier_that_is_corrupt(bucket: tuple[str, str, str]) -> None:
    url, first, _ = bucket
    path = default_local_root() / "v1" / f"{first}.tkln"
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.chmod(0o600)
    path.write_bytes(bytes(damaged))
    rc, report, _ = cli("verify", "--cache", url, "--json")
    status = {(r["tier"], r["artifact"]): r["status"] for r in report["results"]}
    assert rc == 1 and status[("local", first)] == "corrupt" and status[("remote", first)] == "ok"
    assert cli("verify", "--cache", url, "--tier", "remote")[0] == 0  # the bucket itself is fine


def test_a_bucket_that_does_not_answer_fails_the_command(
    tmp_path: Path, s3_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Used to print "[]", rc 0 after 30 s: a CI gate passed with the bucket down.
    monkeypatch.setenv("TORCHKILN_REMOTE_TIMEOUT", "1")
    with blackhole() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
        for command in ("ls", "verify"):
            rc, report, _ = cli(command, "--cache", "s3://silent-bucket/p", "--json")
            assert rc == 1, (command, report)
            (remote,) = [t for t in report["tiers"] if t["name"] == "remote"]
            assert "error" in remote


def test_gc_reports_each_tier(bucket: tuple[str, str, str]) -> None:
    url, first, _ = bucket
    rc, report, _ = cli("gc", "--max-size", "0", "--cache", url, "--tier", "local", "--json")
    assert rc == 0
    (local,) = report["tiers"]
    assert local["tier"] == "local" and local["evicted"] == [first] and local["bytes_after"] == 0
    assert len(RemoteStore(url).list()) == 2  # --tier local leaves the bucket alone


@pytest.mark.slow  # a real compile in-process
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, from inside the compile
def test_a_remote_timeout_shows_in_store_get(tmp_path: Path, s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # After a 30 s remote timeout timings["store_get"] read 0.0 (issue 11): the wait must show where it went.
    import torch

    import torchkiln
    from helpers.models import tiny_mlp
    from torchkiln.store.tiered import TieredStore

    with blackhole() as endpoint:
        remote = RemoteStore("s3://silent-bucket/p", timeout=1.0, endpoint_url=endpoint, key="k", secret="s")
        store = TieredStore(LocalStore(tmp_path / "local"), remote)
        with pytest.warns(torchkiln.RemoteCacheWarning):
            compiled = torchkiln.compile(tiny_mlp(), (torch.randn(2, 16),), cache=store)
    assert compiled.hit is False
    assert compiled.timings["store_get"] >= 0.9, compiled.timings  # the 1 s the bucket took to not answer
