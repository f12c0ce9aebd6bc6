"""One side of a GPU round trip of torch.compile's modes, run as ``python -m tests.gpu.modes_roundtrip CACHE MODE``;
prints one JSON line: hit, key, the first calls' differences from eager, and Inductor's autotuning counters (a
``max-autotune`` compile benchmarks GEMM choices; a hit must not, its choices are in the artifact's code)."""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

import torchkiln


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 512)).cuda().half().eval()


def main() -> None:
    from torch._dynamo.utils import counters

    cache, mode = sys.argv[1], sys.argv[2]
    model = build()
    x = torch.randn(64, 512, device="cuda", dtype=torch.float16, generator=torch.Generator("cuda").manual_seed(1))
    start = time.perf_counter()
    with torch.no_grad():
        expected = model(x)
        compiled = torchkiln.compile(model, cache=cache, mode=None if mode == "default" else mode, strict=True)
        diffs = []
        for _ in range(4):  # reduce-overhead records a CUDA graph on a later call: compare every one
            out = compiled(x)
            torch.cuda.synchronize()
            diffs.append(float((out.float() - expected.float()).abs().max()))
    record = {
        "mode": mode,
        "hit": compiled.hit,
        "key": compiled.key,
        "diffs": diffs,
        "first_output_s": round(time.perf_counter() - start, 3),
        "compile_s": round(compiled.timings.get("compile", 0.0), 3),
        "inductor_counters": {k: v for k, v in counters["inductor"].items() if v},
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
