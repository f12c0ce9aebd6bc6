"""The examples under examples/, each run as a user runs it: twice, in two fresh processes with empty Inductor
caches and one torchkiln cache. The first compiles, the second loads everything (``hit``) and gives the same
results. Tiny configs; about a minute per example on 2 cores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import TESTS, run_script

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++")

EXAMPLES = TESTS.parent / "examples"


def _twice(example: str, tmp_path: Path, *extra: str) -> list[dict[str, Any]]:
    runs = []
    for i in range(2):
        argv = [str(EXAMPLES / example), "--cache", str(tmp_path / "cache"), "--json", *extra]
        proc = run_script(argv, tmp_path / f"run-{i}")
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs


def test_llama_generate_compiles_once_and_loads_in_the_next_process(tmp_path: Path) -> None:
    first, second = _twice("llama_generate.py", tmp_path)
    for run in (first, second):
        assert run["same_tokens_as_eager"] is True
        assert all(spec["dynamic"] for spec in run["specializations"])
    assert not any(spec["hit"] for spec in first["specializations"])
    assert second["hit"] is True and second["tokens"] == first["tokens"]
    # prompts of 6 and 9 tokens share the artifacts: nothing more is compiled for the second prompt or process
    assert [s["key"] for s in second["specializations"]] == [s["key"] for s in first["specializations"]]


def test_library_install_serves_the_librarys_own_torch_compile_calls(tmp_path: Path) -> None:
    first, second = _twice("library_install.py", tmp_path)
    for run in (first, second):
        assert run["max_diff_vs_eager"] <= 1e-5
        assert run["served"]["encoder"]["type"] == "CompiledModule"
        assert run["served"]["similarity"]["type"] == "CompiledFunction"
    assert first["hit"] is False and second["hit"] is True
    assert second["served"] == {
        name: {"type": s["type"], "specializations": [[k, True] for k, _ in s["specializations"]]}
        for name, s in first["served"].items()
    }
