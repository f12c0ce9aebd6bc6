"""What a hit would save if Inductor's compiler were not imported to load a compiled graph: an experiment for the
upstream changes docs/STARTUP.md asks for ("What is left"), never product code.

    python benchmarks/import_cut_probe.py [--device cpu|cuda] [--pairs 3] [--workdir DIR]

A loaded graph runs none of Inductor's lowering, scheduler or autotuning, yet a hit imports them (~440 modules on
torch 2.13 CPU, networkx's ~200 among them) through three lines: the generated module's ``from
torch._inductor.select_algorithm import extern_kernels`` and ``from torch._inductor.codegen.memory_planning import
_align as align``, and ``FxGraphCache``'s ``from .graph import GraphLowering`` after each graph load; the compiled
graph's ``__call__`` then reads ``torch._inductor.debug.RECORD_GRAPH_EXECUTION``. This script fills a torchkiln
cache with the demo model (one process), then runs the hit in fresh processes in pairs: plain, and with light
stand-ins for those four modules put into ``sys.modules`` before the hit (``extern_kernels`` resolving each name to
``torch.<name>``; ``_align`` taken from ``torch._inductor.utils``, where ``memory_planning`` imports it from). Each
stand-in process checks its output against eager. It prints one JSON line per process and the medians.
Stand-ins in ``sys.modules`` are exactly what torchkiln will not do in a product (a later compile in the process
would get them); upstream can make the same cut for real (STARTUP.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time, types
import torch
stand_ins = sys.argv[3] == "1"
if stand_ins:
    select_algorithm = types.ModuleType("torch._inductor.select_algorithm")
    extern = types.ModuleType("extern_kernels")
    extern.__getattr__ = lambda name: getattr(torch, name)
    select_algorithm.extern_kernels = extern
    memory_planning = types.ModuleType("torch._inductor.codegen.memory_planning")
    def _align_attr(name):
        if name != "_align":
            raise AttributeError(name)
        from torch._inductor.utils import _align
        return _align
    memory_planning.__getattr__ = _align_attr
    graph = types.ModuleType("torch._inductor.graph")
    graph.GraphLowering = type("GraphLowering", (), {"save_output_code": None})
    debug = types.ModuleType("torch._inductor.debug")
    debug.RECORD_GRAPH_EXECUTION = False
    for name, module in (("select_algorithm", select_algorithm), ("codegen.memory_planning", memory_planning),
                         ("graph", graph), ("debug", debug)):
        sys.modules["torch._inductor." + name] = module
import torchkiln
from torchkiln.demo_model import build_demo_model, demo_inputs
device = sys.argv[2]
model = build_demo_model(device); inputs = demo_inputs(device)
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
before = len(sys.modules)
t0 = time.perf_counter()
compiled = torchkiln.compile(model, inputs, cache=sys.argv[1], name="import-cut-probe")
if stand_ins:
    torch._inductor.debug = debug  # the package attribute the compiled graph's __call__ reads
t1 = time.perf_counter()
with torch.no_grad():
    out = compiled(*inputs)
sync()
t2 = time.perf_counter()
with torch.no_grad():
    ref = model(*inputs)
print("RESULT " + json.dumps({"stand_ins": stand_ins, "hit": compiled.hit, "compile_s": t1 - t0,
                              "first_output_s": t2 - t0, "modules_imported": len(sys.modules) - before,
                              "matches_eager": bool(torch.allclose(out, ref, atol=1e-4, rtol=1e-4))}))
"""


def _run(workdir: Path, device: str, stand_ins: bool, tag: str) -> dict[str, object]:
    env = dict(
        os.environ,
        TORCHINDUCTOR_CACHE_DIR=str(workdir / f"inductor-{tag}"),
        TRITON_CACHE_DIR=str(workdir / f"triton-{tag}"),
    )
    proc = subprocess.run(  # noqa: PLW1510 - a failed child is reported, not raised
        [sys.executable, "-c", CHILD, str(workdir / "tkcache"), device, "1" if stand_ins else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"stand_ins": stand_ins, "error": (proc.stderr or proc.stdout)[-3000:]}
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="torchkiln-import-cut-"))
    miss = _run(workdir, args.device, False, "miss")
    print(json.dumps({"fill": miss}), flush=True)
    runs: list[dict[str, object]] = []
    for i in range(args.pairs):
        for stand_ins in (False, True):
            run = _run(workdir, args.device, stand_ins, f"{i}-{int(stand_ins)}")
            print(json.dumps(run), flush=True)
            runs.append(run)
    for stand_ins in (False, True):
        ok = [r for r in runs if r.get("stand_ins") is stand_ins and r.get("hit") and r.get("matches_eager")]
        if ok:
            summary = {
                k: statistics.median(float(r[k]) for r in ok)  # type: ignore[arg-type]
                for k in ("compile_s", "first_output_s", "modules_imported")
            }
            print(json.dumps({"median": "stand-ins" if stand_ins else "plain", "runs": len(ok), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
