"""The examples under examples/, each run as a user runs it: twice, in two fresh processes with empty Inductor
caches and one torchkiln cache. The first compiles, the second loads everything (``hit``) and gives the same
results. Tiny configs, on 2 cores: about a minute per example, 1.5-3.5 minutes for the ones that compile more
(vlm_serve.py two artifacts; diffusers_unet.py, whose UNet compiles longest, the slowest)."""

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


def test_vlm_serve_compiles_vision_tower_and_language_model_once(tmp_path: Path) -> None:
    first, second = _twice("vlm_serve.py", tmp_path)
    for run in (first, second):
        assert run["matches_eager"] is True and run["max_diff_vs_eager"] <= 1e-4
        assert [r["tokens"] for r in run["requests"]] == [9, 14]  # two prompt lengths ...
        assert [len(run["specializations"][part]) for part in ("vision", "language")] == [1, 1]  # ... one artifact each
        assert run["specializations"]["language"][0]["dynamic"] is True
    assert first["hit"] is False and second["hit"] is True
    assert second["specializations"] == {
        part: [{**s, "hit": True} for s in specs] for part, specs in first["specializations"].items()
    }


def test_server_preload_reads_weights_from_safetensors_and_hits_with_preload(tmp_path: Path) -> None:
    weights = tmp_path / "weights.safetensors"
    first, second = _twice("server_preload.py", tmp_path, "--weights", str(weights))
    assert first["wrote_checkpoint"] is True and second["wrote_checkpoint"] is False
    for run in (first, second):
        assert run["max_diff_vs_eager"] <= 1e-4
        assert run["preload"]["state"] == "done" and run["preload"]["error"] is None
    assert first["hit"] is False and first["preload"]["prefetched"] == []  # nothing stored yet: imports only
    assert second["hit"] is True and second["key"] == first["key"]
    assert second["preload"]["prefetched"] == [first["key"]]  # read, verified and restored while weights loaded
    assert second["preload"]["deserialized"] == first["key"]  # and loaded by torch, ahead of compile
    assert second["timings"]["compile"] == 0.0


@pytest.mark.slow  # 150-200 s on 2 cores (the UNet compiles longest): `make test-slow`, keeping `make test` ~15 min
def test_diffusers_pipeline_unet_compiles_once_and_loads_in_the_next_process(tmp_path: Path) -> None:
    pytest.importorskip("diffusers", reason="diffusers is in the dev extra")
    first, second = _twice("diffusers_unet.py", tmp_path)
    for run in (first, second):
        assert run["matches_eager"] is True and run["max_relative_diff_vs_eager"] <= 1e-5
        assert len(run["specializations"]) == 1  # every step of every request calls the one artifact
    assert first["hit"] is False and second["hit"] is True
    assert second["specializations"] == [{**s, "hit": True} for s in first["specializations"]]
