"""Tests for restoring a kernel bundle into the Inductor/Triton cache dirs (src/torchkiln/kernels/install.py).

Bundles are built in this process (fakes.py); the cache dir is a tmp dir given to Inductor through
``TORCHINDUCTOR_CACHE_DIR``. The round trip across processes, with real kernels, is in test_record.py.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from torchkiln import fingerprint, kernels
from torchkiln.errors import ArtifactCorruptError

from .fakes import fake_bundle as _fake_bundle
from .fakes import raw_zip as _zip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(root))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    return root


def test_restore_writes_missing_files_only(cache: Path) -> None:
    blob = _fake_bundle(
        {
            "inductor/ab/cab.main.so": b"\x7fELF-fake",
            "inductor/ab/cab.py": b"x = 1\n",
            "triton/k/a.json": b"{}",
        }
    )
    first = kernels.restore(blob)
    assert (first.written, first.present) == (3, 0)
    assert (cache / "ab" / "cab.main.so").read_bytes() == b"\x7fELF-fake"
    assert (cache / "triton" / "0" / "k" / "a.json").exists()
    assert stat.S_IMODE((cache / "ab" / "cab.main.so").stat().st_mode) == 0o755
    assert first.settings == kernels.PINNED_SETTINGS
    (cache / "ab" / "cab.py").write_text("mine\n")
    second = kernels.restore(blob)
    assert (second.written, second.present) == (0, 3)
    assert (cache / "ab" / "cab.py").read_text() == "mine\n"
    assert not [p for p in cache.rglob("*.tkln")]


def test_restore_skips_bundles_from_cpus_with_extensions_this_one_lacks(cache: Path) -> None:
    # Host-independent: an extension no real CPU reports, added to this CPU's own list.
    here = tuple(fingerprint.cpu_isa_extensions() or ())
    report = kernels.restore(_fake_bundle({"inductor/ab/x.so": b"1"}, cpu_isa=(*here, "zz_no_such_ext")))
    assert not report.cpu_matches
    assert report.written == 0
    assert not cache.exists() or not any(cache.rglob("x.so"))


def test_restore_accepts_bundles_from_cpus_with_fewer_extensions(cache: Path) -> None:
    here = tuple(fingerprint.cpu_isa_extensions() or ())
    report = kernels.restore(_fake_bundle({"inductor/ab/y.so": b"1"}, cpu_isa=here[: len(here) // 2]))
    assert report.cpu_matches
    assert report.written == 1


def test_restore_of_a_legacy_bundle_needs_the_exact_cpu(cache: Path) -> None:
    blob = _fake_bundle({"inductor/ab/z.so": b"1"})
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(blob)).read(kernels.MANIFEST))
    del manifest["cpu_isa"]
    manifest["cpu"] = "0" * 16  # the digest of no real CPU
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()[1:]]
    report = kernels.restore(_zip(entries, manifest=manifest))
    assert not report.cpu_matches


@pytest.mark.parametrize(
    "name",
    [
        "../evil.so",
        "inductor/../../evil.so",
        "inductor/ab/../../../evil.so",
        "/tmp/evil.so",
        "inductor//evil.so",
        "inductor/./evil.so",
        "inductor\\..\\evil.so",
        "C:/evil.so",
        "other/evil.so",
        "inductor",
    ],
)
def test_restore_rejects_path_traversal(cache: Path, tmp_path: Path, name: str) -> None:
    with pytest.raises(ArtifactCorruptError):
        kernels.restore(_zip([("inductor/ok.so", b"ok"), (name, b"evil")]))
    assert not (tmp_path / "evil.so").exists()
    assert not cache.exists() or not any(cache.rglob("*.so"))
    with pytest.raises(ArtifactCorruptError):
        _fake_bundle({name: b"evil"})


def test_restore_rejects_links_sizes_and_corruption(cache: Path, tmp_path: Path) -> None:
    link = _zip([("inductor/ab/x.so", b"/etc/passwd")], mode=stat.S_IFLNK | 0o777)
    with pytest.raises(ArtifactCorruptError, match="not a regular file"):
        kernels.restore(link)
    lying = _zip(
        [("inductor/ab/x.so", b"12345")],
        manifest={"format": 1, "files": {"inductor/ab/x.so": {"size": 1, "sha256": "0"}}},
    )
    with pytest.raises(ArtifactCorruptError, match="size"):
        kernels.restore(lying)
    wrong_hash = _zip(
        [("inductor/ab/x.so", b"12345")],
        manifest={"format": 1, "files": {"inductor/ab/x.so": {"size": 5, "sha256": "0" * 64}}},
    )
    with pytest.raises(ArtifactCorruptError, match="sha256"):
        kernels.restore(wrong_hash)
    good = _fake_bundle({"inductor/ab/x.so": b"A" * 4096})
    for i in (0, len(good) // 2, len(good) - 10):
        flipped = bytearray(good)
        flipped[i] ^= 0xFF
        with pytest.raises(ArtifactCorruptError):
            kernels.restore(bytes(flipped))
    with pytest.raises(ArtifactCorruptError):
        kernels.restore(b"not a zip")
    # A symlinked sub-dir inside the cache must not redirect writes outside it.
    cache.mkdir(parents=True, exist_ok=True)
    (tmp_path / "outside").mkdir()
    (cache / "ab").symlink_to(tmp_path / "outside")
    with pytest.raises(ArtifactCorruptError, match="outside"):
        kernels.restore(good)
    assert list((tmp_path / "outside").iterdir()) == []


def test_cache_dirs_match_torch_without_importing_inductor(tmp_path: Path) -> None:
    odd = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "x" / ".." / "c"), "TRITON_CACHE_DIR": str(tmp_path / "t")}
    script = textwrap.dedent(f"""
        import os, sys
        from torchkiln import fingerprint, kernels
        from torchkiln.kernels.install import cache_dirs
        cases = [{{}}, {odd!r}]
        def mirrors():
            out = []
            for case in cases:
                for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                    os.environ.pop(name, None)
                os.environ.update(case)
                out.append(cache_dirs())
            return out
        mirror = mirrors()
        rec = kernels.KernelRecording(private_dir=None, files={{"inductor/ab/k.so": b"x"}})
        assert kernels.restore(kernels.bundle_of(rec)).written == 1
        assert "torch" not in sys.modules, "restore() imported torch"
        import torch._inductor.runtime.cache_dir_utils
        assert mirrors() == mirror, (mirrors(), mirror)  # now through torch's own helpers
        print("ok")
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
