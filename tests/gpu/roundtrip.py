"""One side of a GPU round trip, run as ``python -m tests.gpu.roundtrip CACHE CASE``; prints one JSON line.

CASE ``demo``: the demo transformer on CUDA through torchkiln.compile. CASE ``builtins``: a function that lets a
builtin escape the graph (``return x + 1, type``), the builtins bug's own reproducer (live on torch 2.10/2.11).
"""

from __future__ import annotations

import json
import sys
import time

import torch

import torchkiln
from torchkiln.demo_model import build_demo_model, demo_inputs


def escape_builtin(x: torch.Tensor) -> tuple[torch.Tensor, type]:
    return x + 1, type


def main() -> None:
    cache, case = sys.argv[1], sys.argv[2]
    start = time.perf_counter()
    if case == "demo":
        model = build_demo_model("cuda").eval()
        inputs = demo_inputs("cuda")
        with torch.no_grad():
            expected = model(*inputs)
            compiled = torchkiln.compile(model, inputs, cache=cache, strict=True)
            out = compiled(*inputs)
        torch.cuda.synchronize()
        diff = float((out - expected).abs().max())
        extra: object = None
    else:
        x = torch.randn(4, 8, device="cuda")
        compiled = torchkiln.compile(escape_builtin, (x,), cache=cache, strict=True)
        out, escaped = compiled(x)
        torch.cuda.synchronize()
        diff = float((out - (x + 1)).abs().max())
        extra = escaped.__name__
    first_output = time.perf_counter() - start
    record = {
        "case": case,
        "hit": compiled.hit,
        "key": compiled.key,
        "max_diff": diff,
        "extra": extra,
        "first_output_s": round(first_output, 3),
        "timings": {k: round(v, 3) for k, v in compiled.timings.items()},
        "fixes_applied": list(compiled.header.fixes_applied) if compiled.header else None,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(),
        "fix_states": {s.id: s.state.value for s in torchkiln.fixes()},
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
