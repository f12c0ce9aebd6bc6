"""torch.compile's modes on CUDA through torchkiln (marker ``gpu``; never in CI): compile in one process, load in a
fresh one with empty Inductor and Triton caches. A ``max-autotune`` hit runs no autotuning (its GEMM choices are in
the artifact's code, its Triton launch configs in the artifact's ``.best_config`` files), a ``reduce-overhead`` hit
gives eager's numbers on every call."""

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


def _run(cache: Path, mode: str, caches: Path, model: str = "mlp", dynamic: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "inductor")
    env["TRITON_CACHE_DIR"] = str(caches / "triton")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tests.gpu.modes_roundtrip", str(cache), mode, model, "1" if dynamic else "0"],
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


@pytest.mark.parametrize(
    ("mode", "model", "dynamic"),
    [
        ("default", "mlp", False),  # its 1-D pointwise kernels have several launch configs too
        ("max-autotune", "mlp", False),
        ("reduce-overhead", "mlp", False),
        ("max-autotune-no-cudagraphs", "mlp", False),
        ("max-autotune-no-cudagraphs", "mlp", True),
        # GPT-2's reduction kernels run coordinate descent: their results are found only through the static
        # autotuners' re-pointed paths and kept only by a corrected re-check (compat fixes static-autotuner-paths,
        # coordesc-warm-cache)
        ("max-autotune-no-cudagraphs", "gpt2", False),
    ],
)
def test_mode_compiles_once_and_loads_in_a_fresh_process(tmp_path: Path, mode: str, model: str, dynamic: bool) -> None:
    cache = tmp_path / "tk"
    first = _run(cache, mode, tmp_path / "caches-a", model, dynamic)
    second = _run(cache, mode, tmp_path / "caches-b", model, dynamic)
    assert first["hit"] is False and second["hit"] is True and second["key"] == first["key"]
    assert second["compile_s"] == 0.0
    assert max(first["diffs"] + second["diffs"]) < 1e-2  # float16
    tuned = {name: calls for name, calls in second["tuning_calls"].items() if calls}
    assert tuned == {}, tuned  # real benchmarking calls in the hit's process (not Inductor's replayed counters)
