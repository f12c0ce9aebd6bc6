"""What a CUDA process's first matrix product costs, and how much of it another thread can pay ahead.

    python benchmarks/first_matmul_probe.py [--reps 3] [--dtype float16]

A loaded GPU artifact's first call took 0.12-0.17 s on the H200 against 2.7 ms steady (GPT-2, BENCHMARKS.md,
"Preload loads the artifact ahead"): cuBLAS's library load, handle creation and its kernels' lazy loading are
among the suspects. Each repetition is a fresh process that initializes CUDA, then times its main thread's first
``addmm`` of GPT-2's shapes, either cold (``plain``) or after another thread ran one small product of the same
dtype (``warmed``: what ``torchkiln.preload`` could do on its thread once the program has initialized CUDA). One
JSON line per process; the medians at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
import torch
mode, dtype = sys.argv[1], getattr(torch, sys.argv[2])
torch.cuda.init()
x = torch.randn(128, 768, device="cuda", dtype=dtype)
w = torch.randn(768, 2304, device="cuda", dtype=dtype)
b = torch.randn(2304, device="cuda", dtype=dtype)
torch.cuda.synchronize()
warm_s = 0.0
if mode == "warmed":
    def warm():
        a = torch.randn(8, 8, device="cuda", dtype=dtype)
        torch.mm(a, a)
        torch.cuda.synchronize()
    t = time.perf_counter()
    thread = threading.Thread(target=warm)
    thread.start()
    thread.join()
    warm_s = time.perf_counter() - t
t0 = time.perf_counter()
torch.addmm(b, x, w)
torch.cuda.synchronize()
t1 = time.perf_counter()
torch.addmm(b, x, w)
torch.cuda.synchronize()
t2 = time.perf_counter()
print("PROBE " + json.dumps({"mode": mode, "first_s": t1 - t0, "second_s": t2 - t1, "warm_thread_s": warm_s}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dtype", default="float16")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"plain": [], "warmed": []}
    for _ in range(args.reps):
        for mode, runs in results.items():  # interleaved, so drift hits both alike
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, mode, args.dtype], capture_output=True, text=True, check=False
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
            if line is None:
                sys.stderr.write(proc.stderr[-2000:])
                return 1
            record = json.loads(line[len("PROBE ") :])
            runs.append(record)
            sys.stdout.write(json.dumps(record) + "\n")
    for mode, runs in results.items():
        first = statistics.median(r["first_s"] for r in runs)
        second = statistics.median(r["second_s"] for r in runs)
        sys.stdout.write(
            f"{mode}: first addmm {first * 1e3:.1f} ms (median of {len(runs)}), second {second * 1e3:.2f} ms\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
