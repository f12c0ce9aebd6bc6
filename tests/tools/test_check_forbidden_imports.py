"""Tests for tools/check_forbidden_imports.py: every import form, the allow-lists, parse errors, exit codes.

The exit-code tests run the script as a subprocess, the way `make lint` and pre-commit run it; the
default-scan tests copy it into a throwaway repository so its own root discovery is exercised for real.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "check_forbidden_imports.py"


def _load_tool() -> ModuleType:
    # tools/ is not a package (it holds scripts), so load the file directly.
    spec = importlib.util.spec_from_file_location("check_forbidden_imports", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


cfi = _load_tool()


def _run(*args: str | Path, cwd: Path | None = None, script: Path = SCRIPT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- forms


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import pickle\n", [(1, "pickle")]),
        ("import os, pickle\n", [(1, "pickle")]),
        ("import pickle as p\n", [(1, "pickle")]),
        ("from pickle import loads\n", [(1, "pickle")]),
        ("from pickle import *\n", [(1, "pickle")]),
        ("from pickle import (\n    Pickler,\n    loads,\n)\n", [(1, "pickle")]),
        ("import _pickle\n", [(1, "_pickle")]),
        ("import cloudpickle\n", [(1, "cloudpickle")]),
        ("import dill\n", [(1, "dill")]),
        ("import dill.source\n", [(1, "dill.source")]),
        ("from dill.foo import x\n", [(1, "dill.foo")]),
        ("from cloudpickle.cloudpickle import dumps\n", [(1, "cloudpickle.cloudpickle")]),
        ("def f():\n    import pickle\n    return pickle\n", [(2, "pickle")]),
        ("if True:\n    from dill import dumps\n", [(2, "dill")]),
        (
            "try:\n    import cloudpickle\nexcept ImportError:\n    import pickle as cloudpickle\n",
            [(2, "cloudpickle"), (4, "pickle")],
        ),
        ("class C:\n    def m(self):\n        if x:\n            import _pickle\n", [(4, "_pickle")]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pickle\n", [(3, "pickle")]),
        ('__import__("pickle")\n', [(1, "pickle")]),
        ('m = __import__("dill.source", fromlist=["x"])\n', [(1, "dill.source")]),
        ('__import__(name="cloudpickle")\n', [(1, "cloudpickle")]),
        ('import builtins\nbuiltins.__import__("pickle")\n', [(2, "pickle")]),
        ('import importlib\nimportlib.import_module("pickle")\n', [(2, "pickle")]),
        ('import importlib\nimportlib.import_module(name="_pickle")\n', [(2, "_pickle")]),
        ('from importlib import import_module\nimport_module("dill")\n', [(2, "dill")]),
        (
            'import importlib as il\nil.import_module("cloudpickle.cloudpickle")\n',
            [(2, "cloudpickle.cloudpickle")],
        ),
        ('def f():\n    return __import__("pickle").loads\n', [(2, "pickle")]),
        ("import pickle\nimport dill\n", [(1, "pickle"), (2, "dill")]),
    ],
)
def test_every_import_form_is_found(source: str, expected: list[tuple[int, str]]) -> None:
    assert cfi.find_forbidden(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "",
        "import os\nimport json\nfrom pathlib import Path\n",
        "import pickletools\n",  # a prefix is not a match: pickletools never unpickles
        "import mypickle, dillon, cloudpickles\n",
        "from . import pickle\n",  # relative: a sibling module of ours, not the stdlib
        "from .pickle import helper\n",
        "from ..dill import helper\n",
        "from os import path as pickle\n",
        '"""Never import pickle here."""\n# import pickle\n',
        'text = "import pickle"\n',
        "import importlib\nname = 'x'\nimportlib.import_module(name)\n",  # dynamic: out of reach
        'import importlib\nimportlib.import_module(".pickle", package="torchkiln")\n',
        "obj.pickle()\nobj.dill = 1\n",
        'getattr(obj, "pickle")\n',
        '__import__("json")\n',
    ],
)
def test_clean_sources_have_no_findings(source: str) -> None:
    assert cfi.find_forbidden(source) == []


def test_is_forbidden_matches_top_level_package_only() -> None:
    assert cfi.is_forbidden("pickle")
    assert cfi.is_forbidden("dill.detect")
    assert not cfi.is_forbidden("pickletools")
    assert not cfi.is_forbidden("torchkiln.pickle")


def test_syntax_error_raises_from_find_forbidden() -> None:
    with pytest.raises(SyntaxError):
        cfi.find_forbidden("def f(:\n")


# ----------------------------------------------------------------------------------------- allow-list


def test_allow_list_entries_are_repo_relative_with_reasons() -> None:
    assert "src/torchkiln/compiler.py" in cfi.ALLOW_LIST
    assert "src/torchkiln/compat/fixes/builtins_runtime_env.py" in cfi.ALLOW_LIST
    for path, reason in {**cfi.ALLOW_LIST, **cfi.TEST_ALLOW_LIST}.items():
        assert path.endswith(".py"), path
        assert not path.startswith("/") and "\\" not in path and ".." not in path.split("/"), path
        assert len(reason.strip()) > 20, f"{path}: give a real reason"
    for path in cfi.TEST_ALLOW_LIST:
        assert path.startswith("tests/"), f"{path}: TEST_ALLOW_LIST is for test files only"


@pytest.mark.parametrize("rel", sorted(cfi.ALLOW_LIST))
def test_allow_listed_file_may_import_pickle(tmp_path: Path, rel: str) -> None:
    path = _write(tmp_path / rel, "import pickle\nfrom pickle import Pickler\n")
    assert cfi.check_file(path, root=tmp_path) == []


def test_same_code_elsewhere_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "src/torchkiln/api.py", "import os\n\ndef f():\n    import pickle\n")
    [finding] = cfi.check_file(path, root=tmp_path)
    assert finding.path == "src/torchkiln/api.py"
    assert finding.line == 4
    assert str(finding).startswith("src/torchkiln/api.py:4: forbidden import: pickle. TIP: ")
    assert "ALLOW_LIST in tools/check_forbidden_imports.py" in str(finding)
    assert "torchkiln.compiler" in str(finding)


def test_allow_list_is_by_exact_path_not_by_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "tests/compiler.py", "import pickle\n")
    assert len(cfi.check_file(path, root=tmp_path)) == 1


def test_test_allow_list_mechanism(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "tests/test_plants_pickles.py", "import pickle\n")
    assert len(cfi.check_file(path, root=tmp_path)) == 1
    monkeypatch.setitem(cfi.TEST_ALLOW_LIST, "tests/test_plants_pickles.py", "plants a malicious pickle")
    assert cfi.check_file(path, root=tmp_path) == []


def test_allow_listed_file_with_syntax_error_is_still_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "src/torchkiln/compiler.py", "import pickle\ndef broken(:\n")
    [finding] = cfi.check_file(path, root=tmp_path)
    assert finding.line == 2
    assert "syntax error" in finding.message


def test_file_outside_root_is_never_allowed_and_shown_as_given(tmp_path: Path) -> None:
    path = _write(tmp_path / "src/torchkiln/compiler.py", "import pickle\n")
    [finding] = cfi.check_file(path, root=tmp_path / "elsewhere")
    assert finding.path == str(path)


def test_null_bytes_are_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "nul.py"
    path.write_bytes(b"import os\x00\n")
    [finding] = cfi.check_file(path, root=tmp_path)
    assert finding.path == "nul.py"
    assert "cannot" in finding.message or "syntax error" in finding.message


def test_directory_walk_skips_hidden_and_pycache(tmp_path: Path) -> None:
    _write(tmp_path / "pkg/a.py", "")
    _write(tmp_path / "pkg/sub/b.py", "")
    _write(tmp_path / "pkg/notes.txt", "import pickle\n")
    _write(tmp_path / "pkg/.venv/lib/c.py", "import pickle\n")
    _write(tmp_path / "pkg/__pycache__/d.py", "import pickle\n")
    found = [p.relative_to(tmp_path).as_posix() for p in cfi.iter_python_files([tmp_path / "pkg"])]
    assert found == ["pkg/a.py", "pkg/sub/b.py"]


# --------------------------------------------------------------------------------- script: exit codes


def test_script_clean_file_exits_0_silently(tmp_path: Path) -> None:
    path = _write(tmp_path / "clean.py", "import json\n")
    result = _run(path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_script_reports_every_hit_and_exits_1(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.py", "import os, pickle\n")
    b = _write(tmp_path / "b.py", 'import json\n\ndef f():\n    return __import__("dill")\n')
    result = _run(a, b)
    assert result.returncode == 1, result
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith(f"{a}:1: forbidden import: pickle. TIP: ")
    assert lines[1].startswith(f"{b}:4: forbidden import: dill. TIP: ")
    assert result.stderr == ""


def test_script_syntax_error_exits_1_without_traceback(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.py", "x = 1\ndef f(:\n")
    good = _write(tmp_path / "good.py", "import json\n")
    result = _run(bad, good)
    assert result.returncode == 1
    assert result.stdout.startswith(f"{bad}:2: syntax error")
    assert "Traceback" not in result.stdout + result.stderr


def test_script_missing_path_exits_2_with_usage(tmp_path: Path) -> None:
    clean = _write(tmp_path / "clean.py", "")
    result = _run(clean, tmp_path / "does_not_exist.py")
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "does_not_exist.py" in result.stderr
    assert result.stdout == ""


def test_script_walks_directories(tmp_path: Path) -> None:
    _write(tmp_path / "pkg/deep/er/x.py", "from cloudpickle import dumps\n")
    result = _run(tmp_path / "pkg")
    assert result.returncode == 1
    assert "x.py:1: forbidden import: cloudpickle." in result.stdout


def test_script_default_scan_of_its_own_repository(tmp_path: Path) -> None:
    # A throwaway repository: the copied script must find its root (the parent of tools/) by itself.
    repo = tmp_path / "repo"
    shutil.copy(SCRIPT, _write(repo / "tools/check_forbidden_imports.py", "").parent)
    _write(repo / "src/torchkiln/compiler.py", "import pickle\n")  # allow-listed
    _write(repo / "src/torchkiln/api.py", "import json\n")
    _write(repo / "tests/test_api.py", "import os\n")
    _write(repo / "docs/conf.py", "import pickle\n")  # not a default directory
    _write(repo / ".venv/lib/site.py", "import pickle\n")  # not a default directory
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    script = repo / "tools/check_forbidden_imports.py"
    clean = _run(cwd=elsewhere, script=script)
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")

    _write(repo / "fuzz/fuzz_artifact.py", "import dill\n")
    _write(repo / "benchmarks/bench.py", "if True:\n    import _pickle\n")
    dirty = _run(cwd=elsewhere, script=script)
    assert dirty.returncode == 1
    assert [line.split(" TIP: ")[0] for line in dirty.stdout.splitlines()] == [
        "benchmarks/bench.py:2: forbidden import: _pickle.",
        "fuzz/fuzz_artifact.py:1: forbidden import: dill.",
    ]


# -- the torch-private rule ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import torch._dynamo\n", [(1, "torch._dynamo")]),
        ("from torch._inductor import config\n", [(1, "torch._inductor")]),
        ("from torch import _dynamo\n", [(1, "torch._dynamo")]),
        ("import torch.utils._pytree as p\n", [(1, "torch.utils._pytree")]),
        ("import torch\nx = torch._C._get_tracing_state\n", [(2, "torch._C._get_tracing_state")]),
        ("def f():\n    import importlib\n    importlib.import_module('torch._dynamo')\n", [(3, "torch._dynamo")]),
    ],
)
def test_private_torch_names_are_found(source: str, expected: list[tuple[int, str]]) -> None:
    assert cfi.find_torch_private(source) == expected


@pytest.mark.parametrize(
    "source",
    ["import torch\nv = torch.__version__\n", "import torch.nn.functional as F\n", "x = obj._private.attr\n"],
)
def test_public_torch_names_are_clean(source: str) -> None:
    assert cfi.find_torch_private(source) == []


@pytest.mark.parametrize(
    ("rel", "allowed"),
    [
        ("src/torchkiln/compiler.py", True),
        ("src/torchkiln/compat/fixes/some_fix.py", True),
        ("src/torchkiln/inductor_cache/scopes.py", True),
        ("src/torchkiln/api.py", False),
        ("src/torchkiln/kernels/bundle.py", False),
        ("tests/test_api.py", True),
        ("benchmarks/profile_hit.py", True),
    ],
)
def test_torch_private_rule_applies_inside_the_package_only(tmp_path: Path, rel: str, allowed: bool) -> None:
    path = tmp_path / rel
    path.parent.mkdir(parents=True)
    path.write_text("from torch._inductor import config\n")
    findings = cfi.check_file(path, root=tmp_path)
    assert (findings == []) is allowed, findings
    assert all("private torch name" in str(f) for f in findings)
