"""Profile the torchkiln hit path step by step: where a load with empty Inductor caches spends its time.

    python benchmarks/profile_hit.py [--model demo] [--device cpu] [--workdir DIR] [--out PROFILE.json]

It fills a fresh torchkiln cache with one miss (its own process), then runs the hit three times, each in a
fresh process with empty Inductor/Triton caches:
  1. plain: ``import torch``, ``import torchkiln``, ``torchkiln.compile`` (its ``.timings``: key, store_get,
     decode, restore_kernels, load), the first call, and which heavy torch packages the hit imported
     (``torch._dynamo``, ``torch._inductor``, ...) with their count of modules;
  2. under ``-X importtime``: the costliest imports (self and cumulative) that happen after ``import torch``;
  3. under cProfile: the top functions of ``torchkiln.compile`` + first call by cumulative time.
The step costs go to stdout as a table and to ``--out`` as JSON; BENCHMARKS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# What runs in each child. It prints one JSON line (prefixed) with its measurements.
CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
before = set(sys.modules)
t2 = time.perf_counter()
import torchkiln
t3 = time.perf_counter()
from torchkiln.bench.models import build_model
model, inputs = build_model(sys.argv[1], sys.argv[2])
t4 = time.perf_counter()
mode = sys.argv[4]
prof = None
if mode == "cprofile":
    import cProfile
    prof = cProfile.Profile()
    prof.enable()
with torch.no_grad():
    t5 = time.perf_counter()
    cm = torchkiln.compile(model, inputs, cache=sys.argv[3])
    t6 = time.perf_counter()
    if prof is not None:
        prof.disable()
        import io, pstats
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
        sys.stderr.write(s.getvalue())
        prof = cProfile.Profile()
        prof.enable()
    out = cm(*inputs)
    if sys.argv[2] == "cuda":
        torch.cuda.synchronize()
    t7 = time.perf_counter()
if prof is not None:
    prof.disable()
    import io, pstats
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
    sys.stderr.write("FIRST CALL PROFILE\n" + s.getvalue())
new = set(sys.modules) - before
groups = {}
for name in new:
    parts = name.split(".")
    top = ".".join(parts[:2]) if parts[0] == "torch" and len(parts) > 1 else parts[0]
    groups[top] = groups.get(top, 0) + 1
print("PROFILE " + json.dumps({
    "hit": cm.hit, "key": cm.key, "artifact_bytes": cm.artifact_bytes, "timings": cm.timings,
    "import_torch_s": t1 - t0, "import_torchkiln_s": t3 - t2, "build_model_s": t4 - t3,
    "compile_call_s": t6 - t5, "first_call_s": t7 - t6, "hit_to_first_output_s": t7 - t5,
    "modules_imported_by_hit": len(new), "module_groups": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
}))
"""


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _fresh(work: Path) -> Path:
    """A new, empty Inductor cache folder: every profiled process starts like a new machine."""
    return Path(tempfile.mkdtemp(prefix="inductor-", dir=work))


def _child_env(inductor_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_dir)
    env["TRITON_CACHE_DIR"] = str(inductor_dir / "triton")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return env


def _parse(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    for line in proc.stdout.splitlines():
        if line.startswith("PROFILE "):
            result: dict[str, Any] = json.loads(line[len("PROFILE ") :])
            return result
    raise RuntimeError(f"child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _importtime(stderr: str, limit: int = 25) -> list[dict[str, Any]]:
    """Parse ``-X importtime`` lines; keep the imports after ``torch`` itself finished importing."""
    rows: list[dict[str, Any]] = []
    seen_torch = False
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, cum_us, name = (part.strip() for part in line[len("import time:") :].split("|"))
        if not seen_torch:
            seen_torch = name == "torch"
            continue
        rows.append({"module": name.strip(), "self_s": int(self_us) / 1e6, "cumulative_s": int(cum_us) / 1e6})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:limit]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="torchkiln-profile-"))
    cache = work / "tkcache"
    py = sys.executable
    base = [py, "-c", CHILD, args.model, args.device, str(cache)]

    miss = _parse(_run([*base, "plain"], _child_env(_fresh(work)), args.timeout))
    report: dict[str, Any] = {"miss": miss}
    report["hit"] = _parse(_run([*base, "plain"], _child_env(_fresh(work)), args.timeout))
    proc = _run([py, "-X", "importtime", *base[1:], "plain"], _child_env(_fresh(work)), args.timeout)
    report["hit_importtime"] = _parse(proc)
    report["imports_after_torch"] = _importtime(proc.stderr)
    proc = _run([*base, "cprofile"], _child_env(_fresh(work)), args.timeout)
    report["hit_cprofile"] = _parse(proc)
    report["cprofile_top"], _, report["cprofile_first_call"] = proc.stderr.partition("FIRST CALL PROFILE\n")

    hit = report["hit"]
    print(f"miss: hit={miss['hit']} compile call {miss['compile_call_s']:.2f} s, artifact {miss['artifact_bytes']} B")
    print(f"hit (empty Inductor caches): hit={hit['hit']}")
    for step in ("import_torch_s", "import_torchkiln_s", "build_model_s", "compile_call_s", "first_call_s"):
        print(f"  {step:<24} {hit[step]:8.3f} s")
    for step, seconds in hit["timings"].items():
        print(f"    .timings[{step!r}]{'':<6} {seconds:8.3f} s")
    print(f"  modules imported by the hit: {hit['modules_imported_by_hit']}: {hit['module_groups']}")
    print("costliest imports after `import torch` (cumulative s, -X importtime, inflated by its own overhead):")
    for row in report["imports_after_torch"][:15]:
        print(f"  {row['cumulative_s']:7.3f}  {row['module']}")
    print("cProfile (compile + first call), top by cumulative time:")
    print("\n".join(report["cprofile_top"].splitlines()[-55:]))
    print("cProfile (first call), top by cumulative time:")
    print("\n".join(report["cprofile_first_call"].splitlines()[:40]))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
