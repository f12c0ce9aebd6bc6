"""``torchkiln.preload`` on CUDA (marker ``gpu``; never in CI): the preload thread waits, holding nothing, until the
program has initialized CUDA (by building its model on the GPU), then deserializes the artifact under the import
lock (src/torchkiln/load_ahead.py); compile only wraps it. Same child and checks as tests/test_preload.py.
Run by benchmarks/gpu_run.sh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import HELPERS, run_child, run_script

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MLP = {"target": "helpers.models:cuda_mlp", "inputs": "helpers.models:cuda_mlp_inputs"}
NAME = "gpu-preload-mlp"


def _preload_child(config: dict[str, Any], scratch: Path) -> dict[str, Any]:
    proc = run_script([str(HELPERS / "preload_child.py"), json.dumps(config)], scratch, timeout=300)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TKPRELOAD "))
    result: dict[str, Any] = json.loads(line[len("TKPRELOAD ") :])
    print(json.dumps({k: result[k] for k in ("deserialized", "timings", "compile_timings", "max_diff")}))
    result["stderr"] = proc.stderr
    return result


@pytest.mark.parametrize(
    ("mode", "deserialize"), [("default", True), ("default", False), ("reduce-overhead", True)]
)  # reduce-overhead: CUDA graphs are recorded at the first calls, on the caller's thread, after a load ahead
def test_gpu_preload_deserializes_once_cuda_is_up(tmp_path: Path, mode: str, deserialize: bool) -> None:
    cache = tmp_path / "cache"
    config = {**MLP, "cache": str(cache), "name": NAME, "mode": mode}
    record = run_child(config, tmp_path / "miss")["compiles"][0]
    assert record["error"] is None and record["hit"] is False
    spec = {"name": NAME, "device": "cuda", "deserialize": deserialize}
    result = _preload_child({**config, "preload": spec}, tmp_path / "p")
    assert result["errors"] == [], result["errors"]
    assert "DeadlockError" not in result["stderr"] and "partially initialized" not in result["stderr"]
    assert result["hit"] is True and result["max_diff"] <= 1e-3
    assert result["state"] == "done" and result["warnings"] == []
    assert result["imports_by_others_during"] == [] and result["late_imports"] == []
    assert result["prefetched"] == [record["key"]]
    if deserialize:
        assert result["deserialized"] == record["key"]
        assert result["compile_timings"]["load"] < 0.05  # compile only wrapped the function
    else:
        assert result["deserialized"] is None
