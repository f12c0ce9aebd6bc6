"""cuda_warm.py on CUDA (marker ``gpu``; never in CI): the warm-up starts once, only after the program initialized
CUDA, runs on the caller's current device, imports no module from its thread, and leaves the caller's device alone.
Run by benchmarks/gpu_run.sh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.procs import run_script

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CHILD = r"""
import json, sys
import torch
from torchkiln import cuda_warm

device = torch.cuda.device_count() - 1
before_init = cuda_warm.start("cuda")            # the program has not initialized CUDA: nothing starts
torch.cuda.set_device(device)
torch.ones(1, device="cuda")                     # the program initializes CUDA (on its device)
modules = set(sys.modules)
x = torch.randn(64, 64, device="cuda", dtype=torch.float16)
thread = cuda_warm.start("cuda", ((x,), {}))    # on the device of the call's inputs
again = cuda_warm.start("cuda", ((x,), {}))      # once per process
thread.join(60)
y = (x @ x).float().sum().item()
print("TKWARM " + json.dumps({
    "before_init": before_init is None, "started": thread is not None, "again": again is None,
    "alive": thread.is_alive(), "seconds": cuda_warm.seconds, "new_modules": sorted(set(sys.modules) - modules),
    "device_after": torch.cuda.current_device(), "device": device, "finite": y == y,
}))
"""


def test_gpu_cuda_warm_runs_once_after_the_program_initialized_cuda(tmp_path: Path) -> None:
    proc = run_script(["-c", CHILD], tmp_path, timeout=120)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("TKWARM "))
    result = json.loads(line[len("TKWARM ") :])
    print(json.dumps(result))
    assert result["before_init"] and result["started"] and result["again"]
    assert not result["alive"] and result["seconds"] is not None
    assert result["new_modules"] == []  # nothing imported while the load may be importing on another thread
    assert result["device_after"] == result["device"] and result["finite"]
