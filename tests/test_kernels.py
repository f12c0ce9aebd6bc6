"""Tests for the kernel bundle (src/torchkiln/kernels.py).

The round trip is real: one subprocess compiles with ``recording()`` into cache dir A and writes the
artifact and its bundle; FRESH subprocesses with an empty cache dir B load it, with and without
``restore()``. Compiler runs are proved with a PATH shim: ``g++``/``gcc``/``c++``/``cc`` scripts
that log their argv and then exec the real compiler (Inductor runs ``config.cpp.cxx`` = ``$CXX`` or
``g++`` by name). Version queries (``--version``, ``-v``) are not builds and are reported apart.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from torchkiln import fingerprint, kernels
from torchkiln.errors import ArtifactCorruptError

COMPILERS = ("g++", "gcc", "c++", "cc")
REG = stat.S_IFREG | 0o644
QUERY_FLAGS = {"--version", "-v", "-dumpversion", "-dumpfullversion", "-dumpmachine"}

MODEL = """
import torch

def fn(x, w):
    h = torch.relu(x @ w) * 2.0 + 1.0
    return torch.softmax(h, dim=-1)
"""

# torch 2.10/2.11 gate aot_compile behind a Dynamo flag (gone in later releases).
AOT_FLAG = """
import torch
if hasattr(torch._dynamo.config, "enable_aot_compile"):
    torch._dynamo.config.enable_aot_compile = True
"""

SAVE = (
    AOT_FLAG
    + """
import sys
from pathlib import Path
from torchkiln import fingerprint, kernels
from tk_kernels_model import fn
out = Path(sys.argv[1])
torch.manual_seed(0)
x, w = torch.randn(16, 32), torch.randn(32, 32)
with kernels.recording() as rec:
    cf = torch.compile(fn, fullgraph=True).aot_compile(((x, w), {}))
cf.save_compiled_function(str(out / "art.bin"))
(out / "kernels.zip").write_bytes(kernels.bundle(rec))
torch.save({"x": x, "w": w, "y": cf(x, w)}, out / "ref.pt")
"""
)

LOAD = (
    AOT_FLAG
    + """
import json, sys, time
from pathlib import Path
from torchkiln import fingerprint, kernels
out, mode = Path(sys.argv[1]), sys.argv[2]
ref = torch.load(out / "ref.pt")
t = time.perf_counter()
report = kernels.restore((out / "kernels.zip").read_bytes()) if mode == "restore" else None
with kernels.loading(report):
    f = torch.compiler.load_compiled_function(open(out / "art.bin", "rb"))
y = f(ref["x"], ref["w"])
print(json.dumps({"equal": bool(torch.equal(y, ref["y"])), "seconds": time.perf_counter() - t,
                  "written": report.written if report else 0}))
"""
)


def _make_shim(shim_dir: Path, log: Path) -> None:
    shim_dir.mkdir()
    for name in COMPILERS:
        real = shutil.which(name)
        if real is None:
            continue
        # Same argv[0] and a PATH without the shim, so `g++ -v` prints what it prints without the
        # shim: Inductor hashes that text into its ISA-probe cache key.
        script = textwrap.dedent(f"""\
            #!/bin/bash
            printf '%s\\n' "{name} $*" >> {log}
            PATH="${{PATH//{shim_dir}:/}}" exec -a {name} {real} "$@"
            """)
        path = shim_dir / name
        path.write_text(script)
        path.chmod(0o755)


def _builds(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [line for line in lines if not set(line.split()[1:]) <= QUERY_FLAGS]


def _run(script: str, work: Path, cache: Path, *args: str, shim: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    env["PYTHONPATH"] = os.pathsep.join([str(work), *sys.path])
    env.pop("CXX", None)
    if shim is not None:
        env["PATH"] = f"{shim}:{env['PATH']}"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(work), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (Inductor's CPU backend)")
    work = tmp_path_factory.mktemp("kernels")
    (work / "tk_kernels_model.py").write_text(MODEL)
    # The save runs under the shim too: its log is the control that proves the shim sees Inductor's
    # builds, so an empty log at load cannot be a broken shim.
    _make_shim(work / "shim", work / "save-cc.log")
    _run(SAVE, work, work / "cache_A", shim=work / "shim")
    return work


def test_restored_load_runs_no_compiler(saved: Path, tmp_path: Path) -> None:
    assert any(".cpp" in line for line in _builds(saved / "save-cc.log"))
    log = tmp_path / "cc.log"
    _make_shim(tmp_path / "shim", log)
    out = json.loads(_run(LOAD, saved, tmp_path / "cache_B", "restore", shim=tmp_path / "shim"))
    assert out["equal"]
    assert out["written"] > 0
    assert _builds(log) == []


@pytest.mark.slow
def test_control_load_without_restore_compiles(saved: Path, tmp_path: Path) -> None:
    # Same artifact, empty cache, no bundle: the load itself rebuilds the kernels (~15 s of g++).
    log = tmp_path / "cc.log"
    _make_shim(tmp_path / "shim", log)
    out = json.loads(_run(LOAD, saved, tmp_path / "cache_C", "control", shim=tmp_path / "shim"))
    assert out["equal"]
    assert any(".cpp" in line for line in _builds(log))


def test_bundle_is_deterministic_and_restore_never_overwrites(saved: Path, tmp_path: Path) -> None:
    data = (saved / "kernels.zip").read_bytes()
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names[0] == kernels.MANIFEST
    assert any(n.endswith(".so") for n in names)
    assert not any(n.split("/")[1] in ("locks", "aotautograd", "fxgraph") for n in names[1:])
    files = {n: zipfile.ZipFile(io.BytesIO(data)).read(n) for n in names[1:]}
    rec = kernels.KernelRecording(private_dir=tmp_path, files=files, torch_version="x", isa="avx2")
    assert kernels.bundle(rec) == kernels.bundle(rec)


def _fake_bundle(files: dict[str, bytes], **fields: Any) -> bytes:
    rec = kernels.KernelRecording(private_dir=Path("/nonexistent"), files=files, torch_version="t")
    for key, value in fields.items():
        setattr(rec, key, value)
    return kernels.bundle(rec)


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


def _zip(entries: list[tuple[str, bytes]], *, mode: int = stat.S_IFREG | 0o644, manifest: Any = None) -> bytes:
    if manifest is None:
        manifest = {
            "format": kernels.BUNDLE_FORMAT,
            "files": {n: {"size": len(d), "sha256": __import__("hashlib").sha256(d).hexdigest()} for n, d in entries},
        }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(kernels.MANIFEST, json.dumps(manifest))
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


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
        cases = [{{}}, {odd!r}]
        def mirrors():
            out = []
            for case in cases:
                for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
                    os.environ.pop(name, None)
                os.environ.update(case)
                out.append(kernels._cache_dirs_without_inductor())
            return out
        mirror = mirrors()
        rec = kernels.KernelRecording(private_dir=None, files={{"inductor/ab/k.so": b"x"}})
        assert kernels.restore(kernels.bundle(rec)).written == 1
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
