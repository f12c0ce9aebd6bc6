"""Fixtures for the fleet tests: one moto S3 server per session on 127.0.0.1, a fresh bucket per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .s3server import S3Server, aws_env


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    pytest.importorskip("s3fs", reason="s3fs is in the s3 extra")
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


def fresh_bucket(server: S3Server) -> str:
    name = f"tk-{uuid.uuid4().hex[:16]}"
    server.make_bucket(name)
    return name


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point boto at nothing but loopback and give the host locks a private cache dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TORCHKILN_REMOTE_TIMEOUT", raising=False)
    monkeypatch.delenv("TORCHKILN_LEASE_TTL", raising=False)


@pytest.fixture
def s3_url(s3_server: S3Server, s3_env: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://<fresh bucket>/cache`` on the session server, with the AWS environment pointing at it."""
    for name, value in aws_env(s3_server.endpoint).items():
        monkeypatch.setenv(name, value)
    return f"s3://{fresh_bucket(s3_server)}/cache"
