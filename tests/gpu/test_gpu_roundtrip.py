"""GPU round trips (marker ``gpu``; never in CI): compile in one process, load in a fresh one with empty Inductor
and Triton caches, on CUDA. Run by benchmarks/gpu_run.sh on the H100 (torch 2.11: the builtins fix is live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REPO = Path(__file__).resolve().parents[2]


def _run(cache: Path, case: str, caches: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "inductor")
    env["TRITON_CACHE_DIR"] = str(caches / "triton")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu.roundtrip", str(cache), case],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(record))  # the GPU run's log keeps the numbers
    return record


@pytest.mark.parametrize("case", ["demo", "builtins"])
def test_compile_then_load_in_fresh_process_with_empty_caches(tmp_path: Path, case: str) -> None:
    cache = tmp_path / "tk"
    first = _run(cache, case, tmp_path / "caches-a")
    second = _run(cache, case, tmp_path / "caches-b")
    assert first["hit"] is False
    assert second["hit"] is True
    assert second["key"] == first["key"]
    assert second["max_diff"] <= 1e-3  # TF32/fused-kernel round-off on GPU
    if case == "builtins":
        assert second["extra"] == "type"
        if first["fix_states"].get("builtins-runtime-env") == "applied":
            assert "builtins-runtime-env" in first["fixes_applied"]
