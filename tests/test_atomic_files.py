"""Tests for the one atomic-write helper (src/torchkiln/atomic_files.py).

The store's crash and race tests (tests/store/test_local.py) and the kernel restore tests (tests/kernel_bundle/)
exercise it through its callers; these pin the helper's own contract.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from torchkiln import atomic_files

NAMES = {"temp_prefix": ".t-", "temp_suffix": ".part"}


def _failing(code: int, text: str) -> Callable[..., Any]:
    def fail(*_: object) -> Any:
        raise OSError(code, text)

    return fail


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("durable", [True, False])
def test_create_new_writes_once_and_leaves_no_temp_file(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "a.bin"
    assert atomic_files.create_new(target, b"first", durable=durable, **NAMES) is True
    assert atomic_files.create_new(target, b"second", durable=durable, **NAMES) is False
    assert target.read_bytes() == b"first"
    assert _mode(target) == 0o600  # mkstemp's mode unless told otherwise
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_create_new_sets_the_mode_before_the_name_appears(tmp_path: Path) -> None:
    assert atomic_files.create_new(tmp_path / "k.so", b"\x7fELF", mode=0o755, **NAMES)
    assert _mode(tmp_path / "k.so") == 0o755


def test_create_new_never_replaces_a_dangling_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = tmp_path / "x"
    link.symlink_to(tmp_path / "nowhere")
    assert atomic_files.create_new(link, b"data", **NAMES) is False
    # ... also on a filesystem without hard links, where the check-then-rename fallback runs.
    monkeypatch.setattr(os, "link", _failing(errno.EPERM, "no links"))
    assert atomic_files.create_new(link, b"data", **NAMES) is False
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()
    assert atomic_files.create_new(tmp_path / "y", b"data", **NAMES) is True
    assert (tmp_path / "y").read_bytes() == b"data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "y"]


def test_other_link_errors_are_raised_and_clean_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "link", _failing(errno.EIO, "I/O error"))
    with pytest.raises(OSError, match="I/O error"):
        atomic_files.create_new(tmp_path / "z", b"data", **NAMES)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "write", _failing(errno.ENOSPC, "full"))
    with pytest.raises(OSError, match="full"):
        atomic_files.create_new(tmp_path / "z", b"data", **NAMES)
    with pytest.raises(OSError, match="full"):
        atomic_files.replace(tmp_path / "z", b"data", **NAMES)
    assert list(tmp_path.iterdir()) == []


def test_replace_replaces(tmp_path: Path) -> None:
    target = tmp_path / "memo.json"
    atomic_files.replace(target, b"one", **NAMES)
    atomic_files.replace(target, b"two", **NAMES)
    assert target.read_bytes() == b"two"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memo.json"]


def test_large_writes_go_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write, sizes = os.write, []

    def write(fd: int, data: bytes) -> int:
        sizes.append(len(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    data = os.urandom(3 * (1 << 20) + 5)
    assert atomic_files.create_new(tmp_path / "big", data, **NAMES)
    assert (tmp_path / "big").read_bytes() == data
    assert max(sizes) <= 1 << 20
