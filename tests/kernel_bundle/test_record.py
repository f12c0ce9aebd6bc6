"""Tests for recording a compile's kernels and restoring them in another process (src/torchkiln/kernels/record.py,
install.py, and inductor_cache/scopes.py's recording and loading).

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

import pytest

from torchkiln import kernels

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
(out / "kernels.zip").write_bytes(kernels.bundle_of(rec))
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
    assert kernels.bundle_of(rec) == kernels.bundle_of(rec)


def test_a_triton_kernel_dir_is_bundled_whole(tmp_path: Path) -> None:
    """Every file of a Triton kernel dir travels: the restore writes it into the user's own Triton cache, where a
    later compile of the same kernel hash takes it as a cache hit; without its ``.ptx`` an AOTInductor compile with
    ``package_cpp_only`` or ``emit_multi_arch_kernel`` fails (``Missing kernel assembly code``). Inductor's files
    are all kept too."""
    from torchkiln.kernels import record

    kernel = tmp_path / "triton" / "HASH"
    kernel.mkdir(parents=True)
    suffixes = (".cubin", ".json", ".ttir", ".ttgir", ".llir", ".ptx", ".source")
    for suffix in suffixes:
        (kernel / f"triton_poi_k{suffix}").write_bytes(b"x")
    (kernel / "__grp__triton_poi_k.json").write_bytes(b"{}")
    inductor = tmp_path / "inductor" / "ab"
    inductor.mkdir(parents=True)
    (inductor / "cabc.py").write_bytes(b"x")
    assert sorted(record._collect(tmp_path)) == sorted(
        ["inductor/ab/cabc.py", "triton/HASH/__grp__triton_poi_k.json"]
        + [f"triton/HASH/triton_poi_k{suffix}" for suffix in suffixes]
    )
