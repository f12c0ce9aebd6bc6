"""LocalStore: the shared Store contract plus what only a local disk has (permissions, crashes, full disk)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from torchkiln.errors import ConfigError, StoreError
from torchkiln.store import LocalStore, MemoryStore, Store, default_local_root, open_store
from torchkiln.store.local import LAYOUT_VERSION, TEMP_GRACE_S

from .contract import StoreContract, payload

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions, signals and unlink semantics")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


class TestLocalStoreContract(StoreContract):
    def make_store(self, tmp_path: Path) -> LocalStore:
        return LocalStore(tmp_path / "cache")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(store: LocalStore) -> list[str]:
    return sorted(p.name for p in store.dir.iterdir() if p.is_file()) if store.dir.exists() else []


def _child(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


# -- layout and permissions ------------------------------------------------------------------------


@posix_only
def test_root_is_created_private(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a" / "cache")
    assert store.put("k-1", b"data")
    with store.lock("k-1", timeout=5):
        pass
    assert store.dir == tmp_path / "a" / "cache" / LAYOUT_VERSION
    assert _mode(store.root) == 0o700
    assert _mode(store.dir) == 0o700
    assert _mode(store.dir / "locks") == 0o700
    assert (store.dir / "locks" / "k-1.lock").exists()
    assert _mode(store.dir / "k-1.tkln") == 0o600  # weights may be private; nobody else reads them
    assert _files(store) == ["k-1.tkln"]


def test_reads_do_not_create_the_root(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "never")
    assert store.get("k-1") is None
    assert store.list() == []
    assert store.gc(0) == []
    assert not store.root.exists()


@posix_only
@pytest.mark.parametrize("which", ["root", "v1"])
@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_refuses_a_root_others_can_write(tmp_path: Path, which: str, mode: int) -> None:
    store = LocalStore(tmp_path / "cache")
    store.put("k-1", b"data")
    target = store.root if which == "root" else store.dir
    target.chmod(mode)
    for call in (lambda: store.get("k-1"), lambda: store.put("k-2", b"x"), store.list):
        with pytest.raises(StoreError, match="writable by other users") as info:
            call()
        assert f"chmod go-w {target}" in (info.value.fix or "")
        assert str(target) in str(info.value)


@pytest.mark.skipif(not IS_ROOT, reason="chown to another uid needs root")
def test_refuses_a_root_owned_by_another_user(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    os.chown(root, 65534, 65534)
    with pytest.raises(StoreError, match="owned by uid 65534") as info:
        LocalStore(root).put("k-1", b"data")
    assert "TORCHKILN_CACHE" in (info.value.fix or "")


def test_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        LocalStore(tmp_path / "file").put("k-1", b"data")


def _enter(context: AbstractContextManager[None]) -> None:
    context.__enter__()


def _read_only_scenario(root: Path) -> dict[str, object]:
    store = LocalStore(root)
    assert store.put("kept-1", b"payload")
    store.dir.chmod(0o500)
    root.chmod(0o500)
    out: dict[str, object] = {}
    try:
        calls: dict[str, Callable[[], object]] = {
            "put": lambda: store.put("new-1", b"x"),
            "lock": lambda: _enter(store.lock("new-1", 1)),
        }
        for name, call in calls.items():
            try:
                call()
                out[name] = "no error"
            except StoreError as exc:
                out[name] = str(exc)
        out["get"] = (store.get("kept-1") or b"").decode()
        out["list"] = [e.key for e in store.list()]
    finally:
        root.chmod(0o700)
        store.dir.chmod(0o700)
    return out


def _run_as_nobody(base: Path) -> dict[str, object]:
    """Root ignores permission bits, so the scenario runs in a forked child that became 'nobody'.

    A fork, not a new interpreter: this interpreter may live where 'nobody' cannot execute it (/root/...).
    """
    os.chown(base, 65534, 65534)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads alive; the child only runs the scenario and _exit()s.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_fd, json.dumps(_read_only_scenario(base / "cache")).encode())
            code = 0
        except BaseException as exc:
            os.write(write_fd, json.dumps({"child error": repr(exc)}).encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    result: dict[str, object] = json.loads(out)
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


@posix_only
def test_read_only_root_refuses_put_but_serves_get() -> None:
    base = Path(tempfile.mkdtemp(prefix="torchkiln-ro-"))
    try:
        result = _run_as_nobody(base) if IS_ROOT else _read_only_scenario(base / "cache")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    put_error, lock_error = str(result["put"]), str(result["lock"])
    assert "not writable" in put_error and "TORCHKILN_CACHE" in put_error, result
    assert "key=new-1" in put_error and str(base / "cache") in put_error
    assert "not writable" in lock_error, result
    assert result["get"] == "payload"
    assert result["list"] == ["kept-1"]


# -- where the cache is ----------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("TORCHKILN_CACHE", raising=False)
    return monkeypatch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_CACHE_HOME is a Linux convention")
def test_default_root_honours_xdg_cache_home(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_local_root() == tmp_path / "xdg" / "torchkiln"
    store = open_store()
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "xdg" / "torchkiln"
    assert store.dir == tmp_path / "xdg" / "torchkiln" / "v1"


def test_env_and_explicit_argument(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("TORCHKILN_CACHE", str(tmp_path / "env"))
    env_store = open_store()
    assert isinstance(env_store, LocalStore) and env_store.root == tmp_path / "env"
    explicit = open_store(tmp_path / "arg")  # a PathLike
    assert isinstance(explicit, LocalStore) and explicit.root == tmp_path / "arg"
    as_url = open_store(f"file://{tmp_path}/url")
    assert isinstance(as_url, LocalStore) and as_url.root == tmp_path / "url"
    localhost = open_store(f"file://localhost{tmp_path}/url")
    assert isinstance(localhost, LocalStore) and localhost.root == tmp_path / "url"
    clean_env.setenv("TORCHKILN_CACHE", "memory://from-env")
    mem = open_store()
    assert isinstance(mem, MemoryStore) and mem.url == "memory://from-env"
    clean_env.setenv("TORCHKILN_CACHE", "")  # empty means unset
    assert isinstance(open_store(), LocalStore)


def test_tilde_is_expanded(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("HOME", str(tmp_path))
    store = open_store("~/cache")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "cache"


def test_unknown_scheme_is_a_clear_error() -> None:
    # A typo, not an outage: a ConfigError (the CLI exits 2), never a silent fallback to no cache.
    with pytest.raises(ConfigError, match="unknown cache URL scheme 'nosuch'") as info:
        open_store("nosuch://bucket/prefix")
    assert "s3://" in (info.value.fix or "")


def _tiered_needing_a_missing_package(url: str, *, local_root: Path | None = None) -> Store:
    raise ImportError("Install s3fs to access S3")


def test_remote_scheme_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchkiln.store as store_pkg

    monkeypatch.setattr(store_pkg, "_TIERED", "torchkiln.store.no_such_module:open_tiered")
    with pytest.raises(StoreError, match="remote caches are not available"):
        open_store("s3://bucket/prefix")
    monkeypatch.setattr(store_pkg, "_TIERED", f"{__name__}:_tiered_needing_a_missing_package")
    with pytest.raises(StoreError, match="Install s3fs") as info:
        open_store("s3://bucket/prefix")
    assert info.value.fix == "pip install 'torchkiln[s3]'"


# -- crashes, full disks, concurrent gc ------------------------------------------------------------

_KILLED_WRITER_SCRIPT = """
import os, sys, time
from torchkiln.store import LocalStore
real_write, calls = os.write, []
def stalling_write(fd, data):
    # the first chunk lands on disk, then the writer hangs mid-publish until it is killed
    if calls:
        print("stalled", flush=True)
        time.sleep(600)
    calls.append(1)
    return real_write(fd, data)
os.write = stalling_write
LocalStore(sys.argv[1]).put("big-1", bytes(8 * 1024 * 1024))
"""


@posix_only
def test_writer_killed_mid_publish_leaves_no_visible_artifact(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")
    proc = _child(_KILLED_WRITER_SCRIPT, str(store.root))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "stalled"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    (temp,) = _files(store)  # the dead writer's partial temp file is there ...
    assert temp.startswith(".tmp-") and (store.dir / temp).stat().st_size == 1024 * 1024
    assert store.get("big-1") is None  # ... but invisible
    assert store.list() == []

    data = payload(3, 8 * 1024 * 1024)
    assert store.put("big-1", data) is True
    assert store.get("big-1") == data
    assert store.gc(1 << 40) == []
    assert (store.dir / temp).exists(), "gc must not touch a temp file younger than TEMP_GRACE_S"
    old = time.time() - TEMP_GRACE_S - 60
    os.utime(store.dir / temp, (old, old))
    assert store.gc(1 << 40) == []
    assert _files(store) == ["big-1.tkln"]


_KILLED_LOCK_HOLDER_SCRIPT = """
import sys, time
from torchkiln.store import LocalStore
with LocalStore(sys.argv[1]).lock("held-1", timeout=30):
    print("locked", flush=True)
    time.sleep(600)
"""


@posix_only
def test_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")
    proc = _child(_KILLED_LOCK_HOLDER_SCRIPT, str(store.root))
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(StoreError, match="timed out"), store.lock("held-1", timeout=0.2):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    t0 = time.monotonic()
    with store.lock("held-1", timeout=10):
        assert time.monotonic() - t0 < 5


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """os.write writes its first chunk, then fails with ENOSPC, like a disk that fills up mid-write."""
    real_write, calls = os.write, []

    def write(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)  # the os.write local.py calls
    yield calls


def test_disk_full_is_a_store_error_and_leaves_nothing(tmp_path: Path, full_disk: list[int]) -> None:
    store = LocalStore(tmp_path / "cache")
    with pytest.raises(StoreError, match="No space left") as info:
        store.put("big-1", bytes(3 * 1024 * 1024))
    assert len(full_disk) == 2
    assert "disk holding the cache is full" in (info.value.fix or "")
    assert str(store.dir) in str(info.value) and "key=big-1" in str(info.value)
    assert _files(store) == []  # neither the artifact nor the temp file
    assert store.get("big-1") is None


def test_filesystem_without_hard_links_still_publishes_write_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    store = LocalStore(tmp_path / "cache")
    assert store.put("k-1", b"first") is True
    assert store.put("k-1", b"second") is False
    assert store.get("k-1") == b"first"
    assert _files(store) == ["k-1.tkln"]


_SLOW_READER_SCRIPT = """
import hashlib, sys
with open(sys.argv[1], "rb") as f:
    head = f.read(int(sys.argv[2]))
    print("half", flush=True)
    sys.stdin.readline()
    rest = f.read()
print(len(head) + len(rest), hashlib.sha256(head + rest).hexdigest(), flush=True)
"""


@posix_only
def test_gc_does_not_break_a_reader_that_has_the_file_open(tmp_path: Path) -> None:
    import hashlib

    store = LocalStore(tmp_path / "cache")
    data = payload(5, 6 * 1024 * 1024)
    store.put("read-1", data)
    proc = _child(_SLOW_READER_SCRIPT, str(store.dir / "read-1.tkln"), str(len(data) // 2))
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "half"
    assert store.gc(0) == ["read-1"]
    assert store.get("read-1") is None
    out, _ = proc.communicate("go\n", timeout=30)
    assert out.split() == [str(len(data)), hashlib.sha256(data).hexdigest()]


def test_gc_skips_an_artifact_read_since_it_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "cache")
    store.put("a-1", b"x" * 100)
    store.put("b-2", b"y" * 100)
    old = time.time() - 100
    os.utime(store.dir / "a-1.tkln", (old, old))
    os.utime(store.dir / "b-2.tkln", (old + 1, old + 1))
    real_scan = store._scan

    def scan_then_read() -> Iterator[object]:
        entries = list(real_scan())
        store.get("a-1")  # another process reads a-1 between gc's scan and its unlink
        return iter(entries)

    monkeypatch.setattr(store, "_scan", scan_then_read)
    assert store.gc(100) == ["b-2"]
    assert [e.key for e in store.list()] == ["a-1"]


def test_listing_ignores_foreign_and_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")
    store.put("k-1", b"data")
    for name in [".tmp-abc.part", "notes.txt", ".hidden.tkln", "bad key.tkln"]:
        (store.dir / name).write_bytes(b"junk")
    (store.dir / "dir.tkln").mkdir()
    assert [(e.key, e.size) for e in store.list()] == [("k-1", 4)]
    assert store.gc(0) == ["k-1"]
    assert sorted(p.name for p in store.dir.iterdir()) == [
        ".hidden.tkln",
        ".tmp-abc.part",  # young: may belong to a live writer
        "bad key.tkln",
        "dir.tkln",
        "notes.txt",
    ]


def test_pickles_for_other_processes(tmp_path: Path) -> None:
    import copy

    store = LocalStore(tmp_path / "cache")
    clone = copy.deepcopy(store)  # exercises the same __reduce__ path as pickling
    assert clone.url == store.url and clone.dir == store.dir


def test_gc_rejects_a_negative_size(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="max_size"):
        LocalStore(tmp_path).gc(-1)
