"""torch.compile's modes on CUDA through torchkiln (marker ``gpu``; never in CI): compile in one process, load in a
fresh one with empty Inductor and Triton caches. A ``max-autotune`` hit runs no autotuning (its chosen kernels are
in the artifact), a ``reduce-overhead`` hit gives eager's numbers on every call."""

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


def _run(cache: Path, mode: str, caches: Path) -> dict[str, Any]:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "inductor")
    env["TRITON_CACHE_DIR"] = str(caches / "triton")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu.modes_roundtrip", str(cache), mode],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(record))  # the GPU run's log keeps the numbers
    return record


@pytest.mark.parametrize("mode", ["max-autotune", "reduce-overhead", "max-autotune-no-cudagraphs"])
def test_mode_compiles_once_and_loads_in_a_fresh_process(tmp_path: Path, mode: str) -> None:
    cache = tmp_path / "tk"
    first = _run(cache, mode, tmp_path / "caches-a")
    second = _run(cache, mode, tmp_path / "caches-b")
    assert first["hit"] is False and second["hit"] is True and second["key"] == first["key"]
    assert second["compile_s"] == 0.0
    assert max(first["diffs"] + second["diffs"]) < 1e-2  # float16
    autotuned = {k: v for k, v in second["inductor_counters"].items() if "autotune" in k or "select_algorithm" in k}
    assert autotuned == {}, autotuned
