"""Tests for the install memo of Inductor's source-tree hash (src/torchkiln/inductor_cache/memo.py, identity.py).

What torch computes is asked of torch itself in a fresh process that never imported torchkiln. Install identities
are exercised on fake torch trees under tmp_path (the real venv is never modified). The hit is real and crosses
processes: one process compiles (a miss, which memoizes), a fresh one with empty Inductor caches loads it while
``helpers/memo_child.py`` counts torch's hashing walk (``build_code_hash``) and then asks torch for ``torch_key()``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers.procs import HELPERS, child_env, parse_result, run_child, run_script
from torchkiln import inductor_cache
from torchkiln.inductor_cache import InstallIdentity, identity, install_identity, memo_path, read_memo, write_memo
from torchkiln.inductor_cache import memo as memo_module

OLD_NS = 1_600_000_000 * 10**9  # files of a fake install were written long ago (2020), like a real one

TORCH_KEY = """
import json, sys
from torch._inductor import codecache
assert "torchkiln" not in sys.modules
print("TORCHKEY " + codecache.torch_key().hex())
"""

# Every file torch_key() opens, recorded by an audit hook while it runs (nothing of torchkiln imported).
TORCH_KEY_OPENS = """
import json, os, sys
from torch._inductor import codecache
opened = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.add(os.path.realpath(args[0]))
sys.addaudithook(hook)
codecache.torch_key()
sys.stdout.write("OPENED " + json.dumps(sorted(opened)) + "\\n")
"""

MLP = {"target": "helpers.models:tiny_mlp", "inputs": "helpers.models:mlp_inputs"}
TOL = 1e-5  # a compiled graph against eager, float32 (as in test_api.py)


def _python(code: str, scratch: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=child_env(scratch), capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def torch_computes(tmp_path_factory: pytest.TempPathFactory) -> str:
    """torch_key() as torch computes it in a fresh process without torchkiln."""
    out = _python(TORCH_KEY, tmp_path_factory.mktemp("plain"))
    return next(line.split()[1] for line in out.splitlines() if line.startswith("TORCHKEY "))


@pytest.fixture
def fresh_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """prime_torch_key runs once per process: let each test start over."""
    monkeypatch.setattr(memo_module, "_report", None)


def _torch_dir() -> str:
    return str(Path(torch.__file__).parent)


def _old(path: Path) -> None:
    os.utime(path, ns=(OLD_NS, OLD_NS))


def _fake_install(root: Path) -> Path:
    """site/torch (packages, a non-package dir, headers, Inductor's extra files) and site/torch-X.dist-info/RECORD
    copied from the real install."""
    files = {
        "torch/__init__.py": "__version__ = '9.9.9'\n",
        "torch/functional.py": "def f():\n    return 1\n",
        "torch/_C.cpython-311-x86_64-linux-gnu.so": "\x7fELF not really\n",
        "torch/_inductor/__init__.py": "",
        "torch/_inductor/codecache.py": "KEY = 1\n",
        "torch/_inductor/script.ld": "SECTIONS {}\n",
        "torch/_inductor/codegen/__init__.py": "",
        "torch/_inductor/codegen/aoti_runtime/interface.cpp": "int x;\n",
        "torch/include/ATen/ATen.h": "#pragma once\n",
        "torch/testing/_internal/data/notes.py": "# in a directory without __init__: torch never hashes it\n",
        "torch/testing/__init__.py": "",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        _old(path)
    info = root / "torch-9.9.9.dist-info"
    info.mkdir()
    real = next(Path(_torch_dir()).parent.glob("torch-*.dist-info"), None)
    record = info / "RECORD"
    if real is not None and (real / "RECORD").is_file():
        shutil.copyfile(real / "RECORD", record)
    else:  # an install without a dist-info next to it (editable): any RECORD-shaped file will do
        record.write_text("torch/__init__.py,sha256=abc,22\n")
    _old(record)
    return root / "torch"


def _rewrite_same_size(path: Path) -> None:
    """An in-place edit that keeps the size (and then even the old mtime): only the ctime can tell."""
    data = path.read_bytes()
    path.write_bytes(data[::-1] if data[::-1] != data else data.upper())
    _old(path)


# -- identity ---------------------------------------------------------------------------------------------------
def test_identity_is_stable_and_counts_the_hashed_files(tmp_path: Path) -> None:
    torch_dir = _fake_install(tmp_path)
    first, second = install_identity(torch_dir, "9.9.9"), install_identity(torch_dir, "9.9.9")
    assert first == second
    # __init__, functional, _C, _inductor/{__init__,codecache}, codegen/__init__, testing/__init__, the two extra
    # files and RECORD; not the header, the file in a directory without __init__, nor the dist-info's absent file.
    assert first.files == 10
    assert install_identity(torch_dir, "9.9.10").digest != first.digest  # torch_key hashes torch.__version__


@pytest.mark.parametrize(
    "change",
    [
        "edit a module in place",
        "edit a module in place, same size, old mtime restored",
        "edit Inductor's extra file",
        "add a module to a package",
        "remove a module",
        "turn a directory into a package",
        "modify the copied RECORD",
        "reinstall: every file replaced, timestamps preserved",
        "replace the whole tree (rm -rf; reinstall)",
    ],
)
def test_identity_changes_when_a_hashed_file_may_have(tmp_path: Path, change: str) -> None:
    torch_dir = _fake_install(tmp_path)
    before = install_identity(torch_dir, "9.9.9")
    time.sleep(0.02)  # past the file system's timestamp tick
    if change == "edit a module in place":
        (torch_dir / "functional.py").write_text("def f():\n    return 2\n")
    elif change == "edit a module in place, same size, old mtime restored":
        _rewrite_same_size(torch_dir / "_inductor" / "codecache.py")
    elif change == "edit Inductor's extra file":
        _rewrite_same_size(torch_dir / "_inductor" / "script.ld")
    elif change == "add a module to a package":
        (torch_dir / "_inductor" / "new_pass.py").write_text("")
    elif change == "remove a module":
        (torch_dir / "functional.py").unlink()
    elif change == "turn a directory into a package":
        (torch_dir / "testing" / "_internal" / "__init__.py").write_text("")
    elif change == "modify the copied RECORD":
        record = tmp_path / "torch-9.9.9.dist-info" / "RECORD"
        record.write_bytes(record.read_bytes() + b"torch/extra.py,,\n")
    elif change == "reinstall: every file replaced, timestamps preserved":
        for path in sorted(p for p in torch_dir.rglob("*") if p.is_file()):
            shutil.copy2(path, path.with_suffix(path.suffix + ".new"))
            path.with_suffix(path.suffix + ".new").replace(path)
    elif change == "replace the whole tree (rm -rf; reinstall)":
        shutil.rmtree(torch_dir)
        _fake_install(tmp_path / "again")
        shutil.rmtree(tmp_path / "again" / "torch-9.9.9.dist-info")
        (tmp_path / "again" / "torch").rename(torch_dir)
    assert install_identity(torch_dir, "9.9.9").digest != before.digest


def test_identity_ignores_what_torch_does_not_hash(tmp_path: Path) -> None:
    torch_dir = _fake_install(tmp_path)
    before = install_identity(torch_dir, "9.9.9")
    time.sleep(0.02)
    (torch_dir / "include" / "ATen" / "ATen.h").write_text("#pragma once // edited\n")
    (torch_dir / "testing" / "_internal" / "data" / "notes.py").write_text("# edited\n")
    (torch_dir / "__pycache__").mkdir()
    (torch_dir / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 16)
    assert install_identity(torch_dir, "9.9.9") == before


def test_identity_covers_every_file_torch_key_reads(tmp_path: Path) -> None:
    """The walk is a superset of torch's own: every file torch_key() opens (audit hook) is stat'ed."""
    out = _python(TORCH_KEY_OPENS, tmp_path)
    opened = json.loads(next(line for line in out.splitlines() if line.startswith("OPENED "))[len("OPENED ") :])
    root = os.path.realpath(_torch_dir())
    hashed = [p for p in opened if p.startswith(root + os.sep)]
    assert len(hashed) > 1000  # torch's sources, not just a few files
    lines: list[str] = []
    identity._walk(_torch_dir(), "", lines, [0], set())
    walked = {os.path.realpath(Path(_torch_dir(), line.split("\0")[0])) for line in lines}
    walked |= {os.path.realpath(Path(_torch_dir(), "_inductor", x)) for x in identity._INDUCTOR_EXTRA_FILES}
    assert sorted(set(hashed) - walked) == []


# -- the memo file ----------------------------------------------------------------------------------------------
IDENTITY = InstallIdentity(digest="ab" * 32, files=3, newest_change_ns=0)
VALUE = "0123456789abcdef" * 4


def _written(tmp_path: Path) -> Path:
    path = tmp_path / "memo" / "torch-key-x.json"
    write_memo(path, IDENTITY, {"torch_key": VALUE}, torch_version="9.9.9")
    return path


def test_memo_round_trip_is_private_and_atomic(tmp_path: Path) -> None:
    path = _written(tmp_path)
    assert read_memo(path, IDENTITY) == ({"torch_key": VALUE}, "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    write_memo(path, IDENTITY, {"torch_key": "f" * 64}, torch_version="9.9.9")  # replaced in place
    assert read_memo(path, IDENTITY) == ({"torch_key": "f" * 64}, "")


def _flip_value(path: Path) -> None:
    memo = json.loads(path.read_text())
    memo["values"]["torch_key"] = "1" + memo["values"]["torch_key"][1:]
    path.write_text(json.dumps(memo))


def _reseal(path: Path, **changes: Any) -> None:
    """A well-formed memo with a valid checksum whose fields say something else (e.g. another install)."""
    memo = json.loads(path.read_text())
    memo.update(changes)
    memo.pop("sha256")
    memo["sha256"] = memo_module._checksum(memo)
    path.write_text(json.dumps(memo))


CORRUPTIONS = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "not utf-8": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "a JSON list": lambda p: p.write_text("[1, 2]"),
    "one hex digit flipped": _flip_value,
    "checksum removed": lambda p: p.write_text(
        json.dumps({k: v for k, v in json.loads(p.read_text()).items() if k != "sha256"})
    ),
    "another install": lambda p: _reseal(p, identity="cd" * 32),
    "another format": lambda p: _reseal(p, format=99),
    "value not hex": lambda p: _reseal(p, values={"torch_key": "z" * 64}),
    "value too short": lambda p: _reseal(p, values={"torch_key": "ab"}),
    "oversized": lambda p: p.write_bytes(b" " * (memo_module._MAX_MEMO_BYTES + 1)),
    "group-writable": lambda p: p.chmod(0o620),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_or_foreign_memo_is_ignored(tmp_path: Path, corruption: str) -> None:
    path = _written(tmp_path)
    CORRUPTIONS[corruption](path)
    values, why = read_memo(path, IDENTITY)
    assert values is None
    assert why


def test_memo_behind_a_symlink_is_ignored(tmp_path: Path) -> None:
    real = _written(tmp_path)
    link = real.with_name("torch-key-link.json")
    link.symlink_to(real)
    assert read_memo(link, IDENTITY)[0] is None
    assert read_memo(real.with_name("absent.json"), IDENTITY) == (None, "no memo yet")


def test_memo_path_is_local_under_the_user_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("TORCHKILN_CACHE", "s3://bucket/prefix")  # a shared store never holds the memo
    path = memo_path(_torch_dir())
    assert path.parent == tmp_path / "xdg" / "torchkiln" / "v1" / "memo"
    assert path.name.startswith("torch-key-") and path.suffix == ".json"


# -- the cut in this process ------------------------------------------------------------------------------------
def test_prime_memoizes_what_torch_computes(tmp_path: Path, torch_computes: str, fresh_report: None) -> None:
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "saved", report
    values, why = read_memo(Path(str(report.path)), install_identity(_torch_dir(), torch.__version__))
    assert values == {"torch_key": torch_computes}, why
    assert inductor_cache.prime_torch_key(root=tmp_path) is report  # once per process


@pytest.mark.parametrize("corruption", ["truncated", "another install", "one hex digit flipped"])
def test_prime_recomputes_over_a_corrupt_or_foreign_memo(
    tmp_path: Path, torch_computes: str, fresh_report: None, corruption: str
) -> None:
    from torch._inductor import codecache

    path = memo_path(_torch_dir(), tmp_path)
    write_memo(path, install_identity(_torch_dir(), torch.__version__), {"torch_key": "0" * 64}, torch_version="x")
    CORRUPTIONS[corruption](path)
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "saved", report
    assert codecache.torch_key().hex() == torch_computes  # the planted value was never handed to torch
    assert read_memo(path, install_identity(_torch_dir(), torch.__version__))[0] == {"torch_key": torch_computes}


def test_prime_never_trusts_a_memo_of_another_install(tmp_path: Path, torch_computes: str, fresh_report: None) -> None:
    """A valid, correctly sealed memo written for another identity (torch changed since) is not applied."""
    from torch._inductor import codecache

    path = memo_path(_torch_dir(), tmp_path)
    write_memo(path, InstallIdentity("ef" * 32, 1, 0), {"torch_key": "0" * 64}, torch_version=torch.__version__)
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "saved"
    assert "another install" in report.detail
    assert codecache.torch_key().hex() == torch_computes


def test_prime_leaves_an_unwritable_memo_dir_alone(tmp_path: Path, fresh_report: None) -> None:
    root = tmp_path / "root"
    (root / "v1").mkdir(parents=True)
    (root / "v1" / "memo").write_text("a file where the directory would be")
    report = inductor_cache.prime_torch_key(root=root)
    assert report.state == "computed"
    assert "cannot write" in report.detail


def test_prime_does_not_memoize_racily_clean_files(
    tmp_path: Path, fresh_report: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file changed just before the hash could change again within its timestamp tick: nothing is saved."""
    monkeypatch.setattr(memo_module, "_RACY_NS", 10**20)  # every file counts as just changed
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "computed"
    assert "last 2 s" in report.detail
    assert not memo_path(_torch_dir(), tmp_path).exists()


def test_probe_outside_the_range_is_the_plain_path(
    tmp_path: Path, fresh_report: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from packaging.specifiers import SpecifierSet

    monkeypatch.setattr(memo_module, "TORCH_KEY_RANGE", SpecifierSet("<2.0"))
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "unavailable"
    assert "outside" in report.detail
    assert not memo_path(_torch_dir(), tmp_path).parent.exists()


def test_probe_without_the_hook_is_the_plain_path(
    tmp_path: Path, fresh_report: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch whose torch_key lost its ``set`` (a plain functools.cache, say): no memo, no error."""
    import functools

    from torch._inductor import codecache

    monkeypatch.setattr(codecache, "torch_key", functools.cache(lambda: b"\0" * 32))
    report = inductor_cache.prime_torch_key(root=tmp_path)
    assert report.state == "unavailable"
    assert "set/clear" in report.detail
    monkeypatch.undo()
    monkeypatch.setattr(memo_module, "_report", None)
    monkeypatch.delattr(codecache, "_TORCH_PATH")
    assert inductor_cache.prime_torch_key(root=tmp_path).state == "unavailable"


# -- the hit, across processes ----------------------------------------------------------------------------------
def _memo_child(
    config: dict[str, Any], scratch: Path, xdg: Path, *, prime: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    env = {"XDG_CACHE_HOME": str(xdg), "TK_PRIME_AS_GPU_LOAD": "1" if prime else "0"}
    proc = run_script([str(HELPERS / "memo_child.py"), json.dumps(config)], scratch, extra_env=env)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TKMEMO "))
    return parse_result(proc.stdout), json.loads(line[len("TKMEMO ") :])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One miss in its own process; the machine's memo lives in ``xdg``."""
    work = tmp_path_factory.mktemp("memo-hit")
    built = run_child(
        {**MLP, "cache": str(work / "cache")}, work / "miss", extra_env={"XDG_CACHE_HOME": str(work / "xdg")}
    )
    return {"work": work, "built": built}


def test_miss_memoizes_torch_key(compiled: dict[str, Any], torch_computes: str) -> None:
    record = compiled["built"]["compiles"][0]
    assert record["error"] is None and record["hit"] is False
    memo = list((compiled["work"] / "xdg" / "torchkiln" / "v1" / "memo").glob("torch-key-*.json"))
    assert len(memo) == 1
    assert json.loads(memo[0].read_text())["values"]["torch_key"] == torch_computes


def test_hit_with_the_memo_is_correct_and_does_not_hash(compiled: dict[str, Any], torch_computes: str) -> None:
    work = compiled["work"]
    result, memo = _memo_child({**MLP, "cache": str(work / "cache")}, work / "hit", work / "xdg")
    record = result["compiles"][0]
    assert record["error"] is None, record
    assert record["hit"] is True
    assert record["max_diff"] <= TOL  # the loaded graph's output equals eager in this process
    assert memo["report"]["state"] == "applied", memo
    # torch was asked for torch_key() (as a GPU hit's Triton kernel keys or a recompile would ask) and never walked
    # its sources: the value came from the memo, and it is the value torch computes.
    assert memo["build_code_hash_calls"] == 0
    assert memo["after_torch_key"] == 0
    assert memo["torch_key"] == torch_computes


def test_cpu_hit_neither_hashes_nor_reads_the_memo(compiled: dict[str, Any]) -> None:
    work = compiled["work"]
    result, memo = _memo_child({**MLP, "cache": str(work / "cache")}, work / "cpu-hit", work / "xdg-cpu", prime=False)
    record = result["compiles"][0]
    assert record["error"] is None and record["hit"] is True and record["max_diff"] <= TOL
    assert memo["build_code_hash_calls"] == 0  # a CPU hit never asks for torch_key()
    assert memo["report"] is None  # so the memo was not even looked at
    # the memo directory holds the template memo (template_memo.py) only: no torch-key memo was read or written
    assert not list((work / "xdg-cpu" / "torchkiln" / "v1" / "memo").glob("torch-key-*"))


def test_first_hit_without_a_memo_hashes_once_and_memoizes(compiled: dict[str, Any], torch_computes: str) -> None:
    work = compiled["work"]
    result, memo = _memo_child({**MLP, "cache": str(work / "cache")}, work / "first-hit", work / "xdg-new-machine")
    record = result["compiles"][0]
    assert record["error"] is None and record["hit"] is True and record["max_diff"] <= TOL
    assert memo["report"]["state"] == "saved", memo
    assert memo["build_code_hash_calls"] == 0  # the CPU hit itself never hashed
    assert memo["after_torch_key"] > 0  # priming (as a GPU load does) walked torch's sources, once per machine
    assert memo["torch_key"] == torch_computes
    assert list((work / "xdg-new-machine" / "torchkiln" / "v1" / "memo").glob("torch-key-*.json"))
