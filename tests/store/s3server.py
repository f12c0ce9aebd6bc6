"""Test helpers for the fleet: a real S3-compatible server on 127.0.0.1, and a worker "machine".

``S3Server`` runs moto's standalone server (``python -m moto.server``) in a child process on a free loopback
port, so tests talk HTTP to a real server (and can SIGKILL it), not to a mocked client. Nothing here ever
contacts an address other than 127.0.0.1: credentials come from the environment built by ``aws_env``, and
instance-metadata lookups are disabled.

Run as a script, this file is one worker of the race tests (``python s3server.py worker ...``): it opens a
TieredStore over its own local root, does what ``torchkiln.compile`` does on a miss (get, lock, get again,
"compile", put) with a fake compile that appends to a counter file, and writes a JSON result.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def aws_env(endpoint: str) -> dict[str, str]:
    """Environment for boto/s3fs that points at ``endpoint`` and can reach nothing else."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "NO_PROXY": HOST,
        "no_proxy": HOST,
    }


class S3Server:
    """moto's standalone S3 server in a child process on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **aws_env(self.endpoint)},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-request, as a crashed or partitioned endpoint would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def make_bucket(self, name: str) -> None:
        import boto3

        env = aws_env(self.endpoint)
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)


@contextlib.contextmanager
def blackhole() -> Iterator[str]:
    """An endpoint that accepts TCP connections and never answers: the "slow remote"."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        sock.listen(64)
        yield f"http://{HOST}:{sock.getsockname()[1]}"


def fake_artifact(key: str) -> bytes:
    """What the fake compile produces: deterministic per key, big enough to span several TCP reads."""
    block = hashlib.sha256(key.encode()).digest()
    return b"TKLN-fake\n" + block * 4096


def worker_command(
    *, url: str, local: Path, key: str, counter: Path, out: Path, compile_s: float, timeout: float = 60.0
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "worker",
        f"--url={url}",
        f"--local={local}",
        f"--key={key}",
        f"--counter={counter}",
        f"--out={out}",
        f"--compile-s={compile_s}",
        f"--timeout={timeout}",
    ]


def hold_lease_command(*, url: str, key: str, ready: Path, ttl: float) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "hold",
        f"--url={url}",
        f"--key={key}",
        f"--ready={ready}",
        f"--ttl={ttl}",
    ]


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from torchkiln.store.tiered import open_tiered

    start = time.monotonic()
    compiled = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = open_tiered(args.url, local_root=Path(args.local))
        data = store.get(args.key)
        if data is None:
            with store.lock(args.key, args.timeout):
                data = store.get(args.key)
                if data is None:
                    with open(args.counter, "a") as f:
                        f.write(f"{os.getpid()}\n")
                    time.sleep(args.compile_s)
                    data = fake_artifact(args.key)
                    compiled = True
                    store.put(args.key, data)
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "compiled": compiled,
        "elapsed": time.monotonic() - start,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def _hold(args: argparse.Namespace) -> None:
    """Take the fleet lease, say so, and hang until SIGKILLed (a compiler that dies holding it)."""
    from torchkiln.store.remote import RemoteStore

    store = RemoteStore(args.url, lease_ttl=args.ttl)
    with store.lease(args.key, timeout=30):
        Path(args.ready).write_text(str(os.getpid()))
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker", "hold"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--local")
    parser.add_argument("--counter")
    parser.add_argument("--out")
    parser.add_argument("--ready")
    parser.add_argument("--compile-s", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--ttl", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "hold":
        _hold(args)
        return 0
    result = _worker(args)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
