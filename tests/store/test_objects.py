"""BoundedFS, the bounded fsspec layer under the remote store and the lease (src/torchkiln/store/objects.py).

Runs on fsspec's local filesystem (the stand-in for gs://, az://: no atomic PUT, so publishing goes through a
staging object); tests/store/test_remote.py covers S3. The deadline and the error translation are checked on a
filesystem object that stalls or fails on purpose.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from torchkiln.errors import StoreError
from torchkiln.store.objects import BoundedFS, open_filesystem


@pytest.fixture
def objects(tmp_path: Path) -> BoundedFS:
    fs, root = open_filesystem(f"file://{tmp_path}/bucket", 5.0, {})
    assert root == f"{tmp_path}/bucket"
    return BoundedFS(fs, url=f"file://{tmp_path}/bucket", timeout=5.0, timeout_setting="TEST_TIMEOUT")


def test_reads_writes_and_absent_answers(objects: BoundedFS, tmp_path: Path) -> None:
    root = f"{tmp_path}/bucket"
    assert objects.object_store is False
    assert objects.get(f"{root}/a.bin") is None
    assert objects.exists(f"{root}/a.bin") is False
    assert objects.info(f"{root}/a.bin") is None
    assert objects.list(f"{root}/nowhere") == [] and objects.names(f"{root}/nowhere") == []
    assert objects.delete(f"{root}/a.bin") is False
    objects.delete_quietly(f"{root}/a.bin")  # absent: nothing to do, nothing raised

    objects.put(f"{root}/dir/a.bin", b"first")  # makes the folder a mounted filesystem needs
    objects.put(f"{root}/dir/a.bin", b"second")  # a plain put replaces (claims are renewed this way)
    objects.put(f"{root}/dir/b.bin", b"bb")
    assert objects.get(f"{root}/dir/a.bin") == b"second"
    info = objects.info(f"{root}/dir/a.bin")
    assert info is not None and (info.name, info.size, info.is_file) == ("a.bin", 6, True)
    assert info.mtime > time.time() - 60
    assert sorted(i.name for i in objects.list(f"{root}/dir")) == ["a.bin", "b.bin"]
    assert sorted(Path(p).name for p in objects.names(f"{root}/dir")) == ["a.bin", "b.bin"]
    assert [Path(p).name for p in objects.glob(f"{root}/dir/a.*")] == ["a.bin"]
    many = objects.get_many([f"{root}/dir/a.bin", f"{root}/dir/gone.bin", f"{root}/dir/b.bin"])
    assert sorted((Path(p).name, b) for p, b in many.items()) == [("a.bin", b"second"), ("b.bin", b"bb")]
    assert objects.get_many([]) == {}
    assert objects.delete(f"{root}/dir/a.bin") is True
    assert objects.exists(f"{root}/dir/a.bin") is False


def test_put_if_absent_is_write_once_through_a_staging_object(objects: BoundedFS, tmp_path: Path) -> None:
    root = f"{tmp_path}/bucket"
    # remote.py's layout: the staging folder lies inside the folder published into, so making one makes both.
    assert objects.put_if_absent(f"{root}/v1/k.tkln", b"whole", staging=f"{root}/v1/tmp/k.1.part") is True
    assert objects.put_if_absent(f"{root}/v1/k.tkln", b"again", staging=f"{root}/v1/tmp/k.2.part") is False
    assert (tmp_path / "bucket/v1/k.tkln").read_bytes() == b"whole"
    assert list((tmp_path / "bucket/v1/tmp").iterdir()) == []  # moved into place, nothing left behind


class _Stalling:
    """A filesystem whose reads hang and whose writes fail: what an unreachable or broken remote looks like."""

    protocol = ("s3", "s3a")

    def __init__(self) -> None:
        self.release = threading.Event()

    def cat_file(self, path: str) -> bytes:
        self.release.wait(30)
        return b""

    def exists(self, path: str) -> bool:
        raise PermissionError(13, "Access Denied")

    def pipe_file(self, path: str, data: bytes, **_: Any) -> None:
        raise ConnectionError("connection reset by peer")


def test_every_call_is_bounded_and_every_failure_is_a_store_error() -> None:
    fs = _Stalling()
    objects = BoundedFS(fs, url="s3://bucket/p", timeout=0.3, timeout_setting="TEST_TIMEOUT")
    assert objects.object_store is True
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError) as info:
            objects.get("bucket/p/v1/k.tkln", key="k")
        assert time.monotonic() - t0 < 3
        assert isinstance(info.value.__cause__, TimeoutError)
        assert info.value.where == "s3://bucket/p key k"
        assert "remote get failed" in info.value.what
        assert info.value.fix is not None and "TEST_TIMEOUT" in info.value.fix and "0.3 s" in info.value.fix
    finally:
        fs.release.set()
    with pytest.raises(StoreError, match="remote lease check failed: PermissionError") as denied:
        objects.exists("bucket/p/v1/leases/k/t.lease", key="k", what="lease check")
    assert isinstance(denied.value, OSError)
    with pytest.raises(StoreError, match="ConnectionError"):
        objects.put_if_absent("bucket/p/v1/k.tkln", b"x", staging="unused", key="k")
    objects.delete_quietly("bucket/p/v1/k.tkln")  # best effort: the missing rm_file is logged, not raised


def test_a_slow_call_is_announced_and_a_fast_one_is_not(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    import time

    from torchkiln.store.objects import ANNOUNCE_AFTER, run_bounded

    with caplog.at_level(logging.INFO, logger="torchkiln.progress"):
        assert run_bounded(lambda: 1, 5.0, "get", announce="remote get fast") == 1
        assert run_bounded(lambda: time.sleep(ANNOUNCE_AFTER + 0.3) or 2, 10.0, "get", announce="remote get slow") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "remote get slow ..." in messages and not any("fast" in m for m in messages)
