"""A/B of how gc_pause.py ends a pause: a CPU demo hit in fresh processes, in pairs, with the pause's objects handed
to the oldest generation (the default) and with that one step off (the young collection over them left to run).

    python benchmarks/gc_resume_probe.py CACHE_DIR [--pairs 3]

CACHE_DIR must hold the demo artifact under the name ``gc-resume-probe`` (the first process fills it: a miss).
Each child prints one JSON line: the hit's compile call and first output, and the collector's passes (generation,
seconds) from the compile call to the first output, read from ``gc.callbacks``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import gc, json, sys, time
import torch, torchkiln
from torchkiln import gc_pause
if sys.argv[2] == "off":
    gc_pause._age_pause_allocations = lambda: None
from torchkiln.demo_model import build_demo_model, demo_inputs
model = build_demo_model(); inputs = demo_inputs()
passes = []
def clock(phase, info, start=[0.0]):
    if phase == "start":
        start[0] = time.perf_counter()
    else:
        passes.append([info["generation"], round(time.perf_counter() - start[0], 4)])
gc.callbacks.append(clock)
t0 = time.perf_counter()
compiled = torchkiln.compile(model, inputs, cache=sys.argv[1], name="gc-resume-probe")
t1 = time.perf_counter()
with torch.no_grad():
    compiled(*inputs)
t2 = time.perf_counter()
print("RESULT " + json.dumps({"aging": sys.argv[2], "hit": compiled.hit, "compile_s": round(t1 - t0, 3),
                              "first_output_s": round(t2 - t0, 3), "collections": passes}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cache")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    for i in range(args.pairs + 1):
        for aging in ("off", "on") if i else ("on",):  # the first process only fills the cache
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, args.cache, aging], capture_output=True, text=True, check=False
            )
            lines = [ln[len("RESULT ") :] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            print(lines[-1] if lines else json.dumps({"aging": aging, "error": proc.stderr[-2000:]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
