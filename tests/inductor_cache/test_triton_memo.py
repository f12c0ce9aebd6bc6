"""Tests for the install memo of Triton's source-tree hash (src/torchkiln/inductor_cache/triton_memo.py).

Identities are exercised on fake package trees under tmp_path (the real install is never modified). Where Triton
is installed (the torch 2.11 lane: ``make test-compat``), what Triton computes is asked of Triton itself in a fresh
process that never imported torchkiln, and a real miss and CPU hit cross processes while an audit hook counts
how often ``triton_key()`` really hashed (it opens ``libtriton``; see helpers/memo_child.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import HELPERS, child_env, parse_result, run_script
from torchkiln import inductor_cache
from torchkiln.inductor_cache import InstallIdentity, memo_path, read_memo, tree_identity, triton_memo, write_memo

OLD_NS = 1_600_000_000 * 10**9
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (the torch 2.11 lane has it)")

TRITON_KEY = """
import sys
import triton.runtime.cache as c
assert "torchkiln" not in sys.modules
print("TRITONKEY " + c.triton_key())
"""

TRITON_KEY_OPENS = """
import json, os, sys
import triton.runtime.cache as c
opened = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.add(os.path.realpath(args[0]))
sys.addaudithook(hook)
c.triton_key()
sys.stdout.write("OPENED " + json.dumps(sorted(opened)) + "\\n")
"""
MLP = {"target": "helpers.models:tiny_mlp", "inputs": "helpers.models:mlp_inputs"}
TOL = 1e-5


def _python(code: str, scratch: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(scratch), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture
def fresh() -> Any:
    """prime_triton_key runs once per process: each test starts over and leaves Triton as it found it."""
    triton_memo.revert_triton_key()
    yield
    triton_memo.revert_triton_key()


# -- identity ---------------------------------------------------------------------------------------------------
def _fake_triton(root: Path) -> Path:
    files = {
        "triton/__init__.py": "__version__ = '3.6.0'\n",
        "triton/runtime/cache.py": "def triton_key(): ...\n",
        "triton/compiler/__init__.py": "",
        "triton/compiler/code_generator.py": "X = 1\n",
        "triton/backends/nvidia/compiler.py": "Y = 2\n",
        "triton/backends/nvidia/bin/ptxas": "\x7fELF\n",
        "triton/language/core.py": "Z = 3\n",
        "triton/_C/libtriton.so": "\x7fELF not really\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, ns=(OLD_NS, OLD_NS))
    info = root / "triton-3.6.0.dist-info"
    info.mkdir()
    (info / "RECORD").write_text("triton/__init__.py,sha256=abc,22\n")
    return root / "triton"


def test_tree_identity_is_stable_and_counts_every_file(tmp_path: Path) -> None:
    tree = _fake_triton(tmp_path)
    first = tree_identity(tree, "3.6.0", extra=("ext\0so",))
    assert first == tree_identity(tree, "3.6.0", extra=("ext\0so",))
    assert first.files == 9  # the 8 files and RECORD
    assert tree_identity(tree, "3.6.1", extra=("ext\0so",)).digest != first.digest  # triton_key hashes __version__
    assert tree_identity(tree, "3.6.0", extra=("ext\0pyd",)).digest != first.digest  # EXT_SUFFIX picks libtriton


@pytest.mark.parametrize(
    "change",
    [
        "edit libtriton in place, same size, old mtime restored",
        "edit a language module",
        "add a backend module",
        "remove a compiler module",
        "replace a file (reinstall, timestamps preserved)",
        "modify RECORD",
    ],
)
def test_tree_identity_changes_when_a_hashed_file_may_have(tmp_path: Path, change: str) -> None:
    tree = _fake_triton(tmp_path)
    before = tree_identity(tree, "3.6.0")
    time.sleep(0.02)
    if change == "edit libtriton in place, same size, old mtime restored":
        lib = tree / "_C" / "libtriton.so"
        lib.write_bytes(lib.read_bytes()[::-1])
        os.utime(lib, ns=(OLD_NS, OLD_NS))
    elif change == "edit a language module":
        (tree / "language" / "core.py").write_text("Z = 4\n")
    elif change == "add a backend module":
        (tree / "backends" / "nvidia" / "driver.py").write_text("")
    elif change == "remove a compiler module":
        (tree / "compiler" / "code_generator.py").unlink()
    elif change == "replace a file (reinstall, timestamps preserved)":
        path = tree / "runtime" / "cache.py"
        shutil.copy2(path, path.with_suffix(".new"))
        path.with_suffix(".new").replace(path)
    elif change == "modify RECORD":
        (tmp_path / "triton-3.6.0.dist-info" / "RECORD").write_text("changed\n")
    assert tree_identity(tree, "3.6.0").digest != before.digest


def test_tree_identity_ignores_bytecode(tmp_path: Path) -> None:
    tree = _fake_triton(tmp_path)
    before = tree_identity(tree, "3.6.0")
    (tree / "runtime" / "__pycache__").mkdir()
    (tree / "runtime" / "__pycache__" / "cache.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert tree_identity(tree, "3.6.0") == before


def test_memo_value_must_have_triton_keys_shape(tmp_path: Path) -> None:
    identity = InstallIdentity("ab" * 32, 3, 0)
    valid = triton_memo._valid_value("3.6.0")
    good = "3.6.0" + "-".join(["a" * 64, "b" * 64])
    path = tmp_path / "m" / "triton-key-x.json"
    write_memo(path, identity, {"triton_key": good}, torch_version="3.6.0")
    assert read_memo(path, identity, name="triton_key", valid=valid) == ({"triton_key": good}, "")
    for bad in ("3.7.0" + "a" * 64, "3.6.0" + "g" * 64, "3.6.0" + "a" * 63, "3.6.0", "3.6.0-" + "a" * 64):
        write_memo(path, identity, {"triton_key": bad}, torch_version="3.6.0")
        assert read_memo(path, identity, name="triton_key", valid=valid)[0] is None, bad
    # a torch_key memo is never read as a triton_key memo (and the other way round)
    write_memo(path, identity, {"torch_key": "0" * 64}, torch_version="3.6.0")
    assert read_memo(path, identity, name="triton_key", valid=valid)[0] is None
    assert read_memo(path, identity)[0] == {"torch_key": "0" * 64}


# -- the probe --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_TRITON, reason="checks the plain path where triton is absent")
def test_without_triton_the_cut_is_unavailable(tmp_path: Path, fresh: None) -> None:
    report = inductor_cache.prime_triton_key(root=tmp_path)
    assert report.state == "unavailable"
    assert not (tmp_path / "v1" / "memo").exists()


@needs_triton
@pytest.mark.compat
def test_probe_refuses_a_triton_outside_the_range(tmp_path: Path, fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from packaging.specifiers import SpecifierSet

    monkeypatch.setattr(triton_memo, "TRITON_KEY_RANGE", SpecifierSet("<1.0"))
    report = inductor_cache.prime_triton_key(root=tmp_path)
    assert report.state == "unavailable" and "outside" in report.detail


@needs_triton
@pytest.mark.compat
def test_probe_refuses_when_torch_binds_another_function(
    tmp_path: Path, fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.runtime import triton_compat

    monkeypatch.setattr(triton_compat, "triton_key", lambda: "3.6.0" + "0" * 64)
    report = inductor_cache.prime_triton_key(root=tmp_path)
    assert report.state == "unavailable" and "another function" in report.detail


# -- the cut in this process (triton installed) -----------------------------------------------------------------
@pytest.fixture(scope="module")
def triton_computes(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = _python(TRITON_KEY, tmp_path_factory.mktemp("plain"))
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("TRITONKEY "))


@needs_triton
@pytest.mark.compat
def test_identity_covers_every_file_triton_key_reads(tmp_path: Path) -> None:
    out = _python(TRITON_KEY_OPENS, tmp_path)
    opened = json.loads(next(line for line in out.splitlines() if line.startswith("OPENED "))[len("OPENED ") :])
    hook, why = triton_memo._hook()
    assert hook is not None, why
    root = os.path.realpath(hook.triton_dir)
    read = {p for p in opened if p.startswith(root + os.sep)}
    assert any(p.endswith("libtriton.so") for p in read) and len(read) > 20
    lines: list[str] = []
    from torchkiln.inductor_cache import identity

    identity._walk_all(hook.triton_dir, "", lines, [0], set())
    walked = {os.path.realpath(Path(hook.triton_dir, line.split("\0")[0])) for line in lines}
    assert sorted(read - walked) == []


@needs_triton
@pytest.mark.compat
def test_prime_memoizes_then_applies_what_triton_computes(tmp_path: Path, triton_computes: str, fresh: None) -> None:
    from torch._inductor.runtime import triton_compat
    from triton.runtime import autotuner, cache

    original = cache.triton_key
    first = inductor_cache.prime_triton_key(root=tmp_path)
    assert first.state in ("saved", "already-set"), first
    if first.state == "already-set":  # something in this test process hashed already: start over once
        original.cache_clear()
        triton_memo.revert_triton_key()
        first = inductor_cache.prime_triton_key(root=tmp_path)
        assert first.state == "saved", first
    assert inductor_cache.prime_triton_key(root=tmp_path) is first  # once per process
    # now as a fresh process would: forget the value, apply the memo
    triton_memo.revert_triton_key()
    original.cache_clear()
    applied = inductor_cache.prime_triton_key(root=tmp_path)
    assert applied.state == "applied", applied
    for binding in (cache.triton_key, autotuner.triton_key, triton_compat.triton_key):
        assert binding is not original
        assert binding() == triton_computes
    assert cache.get_cache_key.__globals__["triton_key"]() == triton_computes  # what triton.compile keys with
    assert original.cache_info().currsize == 0  # Triton never hashed
    triton_memo.revert_triton_key()
    assert cache.triton_key is original and triton_compat.triton_key is original


@needs_triton
@pytest.mark.compat
def test_a_memo_of_another_install_is_never_applied(
    tmp_path: Path, triton_computes: str, fresh: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The install changed since the memo was written (any hashed file): Triton hashes again and the memo is
    replaced; the planted value never reaches a caller."""
    from triton.runtime import cache

    hook, _ = triton_memo._hook()
    assert hook is not None
    path = memo_path(hook.triton_dir, tmp_path, prefix="triton-key")
    planted = "3.6.0" + "0" * 64
    write_memo(path, InstallIdentity("ef" * 32, 1, 0), {"triton_key": planted}, torch_version=hook.version)
    cache.triton_key.cache_clear()
    report = inductor_cache.prime_triton_key(root=tmp_path)
    assert report.state == "saved" and "another install" in report.detail, report
    assert cache.triton_key() == triton_computes
    # and a memo of this install's identity, but then a file changes: the next process's identity differs
    triton_memo.revert_triton_key()
    cache.triton_key.cache_clear()
    monkeypatch.setattr(triton_memo, "_identity", lambda _hook: InstallIdentity("12" * 32, 1, 0))
    again = inductor_cache.prime_triton_key(root=tmp_path)
    assert again.state in ("saved", "computed") and "another install" in again.detail, again
    assert cache.triton_key() == triton_computes


# -- across processes: a miss memoizes, a CPU hit never hashes ----------------------------------------------
def _memo_child(config: dict[str, Any], scratch: Path, xdg: Path, **env: str) -> tuple[dict[str, Any], dict[str, Any]]:
    proc = run_script(
        [str(HELPERS / "memo_child.py"), json.dumps(config)], scratch, extra_env={"XDG_CACHE_HOME": str(xdg), **env}
    )
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TKMEMO "))
    return parse_result(proc.stdout), json.loads(line[len("TKMEMO ") :])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("triton-memo-hit")
    result, memo = _memo_child({**MLP, "cache": str(work / "cache")}, work / "miss", work / "xdg")
    return {"work": work, "result": result, "memo": memo}


@needs_triton
@pytest.mark.compat
def test_miss_memoizes_triton_key(compiled: dict[str, Any], triton_computes: str) -> None:
    record, memo = compiled["result"]["compiles"][0], compiled["memo"]
    assert record["error"] is None and record["hit"] is False
    assert memo["triton_report"]["state"] == "saved", memo
    files = list((compiled["work"] / "xdg" / "torchkiln" / "v1" / "memo").glob("triton-key-*.json"))
    assert len(files) == 1
    assert json.loads(files[0].read_text())["values"]["triton_key"] == triton_computes


@needs_triton
@pytest.mark.compat
def test_cpu_hit_never_runs_triton_key(compiled: dict[str, Any]) -> None:
    work = compiled["work"]
    result, memo = _memo_child({**MLP, "cache": str(work / "cache")}, work / "hit", work / "xdg")
    record = result["compiles"][0]
    assert record["error"] is None and record["hit"] is True and record["max_diff"] <= TOL
    assert memo["triton_key_runs"] == 0, memo  # neither Triton's hash ...
    assert memo["triton_report"] is None  # ... nor the memo check ran on a CPU hit


@needs_triton
@pytest.mark.compat
def test_gpu_style_load_applies_the_memo_without_hashing(compiled: dict[str, Any], triton_computes: str) -> None:
    work = compiled["work"]
    result, memo = _memo_child(
        {**MLP, "cache": str(work / "cache")}, work / "gpu-style", work / "xdg", TK_PRIME_TRITON="1"
    )
    assert result["compiles"][0]["hit"] is True
    assert memo["triton_report"]["state"] == "applied", memo
    assert memo["triton_key_runs_after"] == 0  # Triton asked for its key and never hashed
    assert memo["triton_key"] == triton_computes
