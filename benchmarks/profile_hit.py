"""Profile the torchkiln hit path step by step: where a load with empty Inductor caches spends its time.

    python benchmarks/profile_hit.py [--model demo] [--device cpu] [--reps 3] [--workdir DIR] [--out PROFILE.json]
                                     [--src OTHER_CHECKOUT/src]

It fills a fresh torchkiln cache with one miss (its own process), then runs the hit in fresh processes with
empty Inductor/Triton caches (all of them share one ``XDG_CACHE_HOME`` under the workdir, which holds what
torchkiln keeps per install, e.g. the install memo of Inductor's source-tree hash):
  1. plain, ``--reps`` times: ``import torch``, ``import torchkiln``, ``torchkiln.compile`` (its ``.timings``:
     key, store_get, decode, restore_kernels, load), the first call, and which heavy torch packages the hit
     imported (``torch._dynamo``, ``torch._inductor``, ...) with their count of modules; medians are printed;
  2. under ``-X importtime``: the costliest imports (self and cumulative) that happen after ``import torch``;
  3. under cProfile: the top functions of ``torchkiln.compile`` + first call by cumulative time, and every call
     of a source-tree hash (``torch_key``, ``triton_key``, ``build_code_hash``, ...) with its cumulative time;
  4. ``--reps`` times each: what Inductor's source-tree hash ``torch_key()`` costs a fresh process that needs it
     (every compile; a GPU hit's Triton kernel keys), plain and after ``torchkiln.inductor_cache`` primed it
     from the install memo (where this torchkiln has one).
The step costs go to stdout as a table and to ``--out`` as JSON; BENCHMARKS.md records them.
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
from typing import Any

# What runs in each child. It prints one JSON line (prefixed) with its measurements.
CHILD = r"""
import json, sys, time
# the functions that hash a source tree (torch's, triton's, cutlass's) somewhere under torch._inductor / triton
HASHES = {"torch_key", "triton_key", "cutlass_key", "build_code_hash", "get_code_hash", "triton_hash_with_backend"}
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
        compile_stats = pstats.Stats(prof, stream=s)
        compile_stats.sort_stats("cumulative").print_stats(45)
        sys.stderr.write(s.getvalue())
        prof = cProfile.Profile()
        prof.enable()
    out = cm(*inputs)
    if sys.argv[2] == "cuda":
        torch.cuda.synchronize()
    t7 = time.perf_counter()
hashes = None
if prof is not None:
    prof.disable()
    import io, pstats
    s = io.StringIO()
    first = pstats.Stats(prof, stream=s)
    first.sort_stats("cumulative").print_stats(30)
    sys.stderr.write("FIRST CALL PROFILE\n" + s.getvalue())
    hashes = []
    for stats in (compile_stats, first):
        for (path, line, name), (_, calls, _, cum, callers) in stats.stats.items():
            if name in HASHES:
                hashes.append({"function": f"{path}:{line}({name})", "calls": calls, "cumulative_s": cum,
                               "callers": sorted(f"{c[0]}:{c[1]}({c[2]})" for c in callers)})
try:
    from torchkiln import inductor_cache
    memo = inductor_cache.report()
    memo = None if memo is None else {"state": memo.state, "detail": memo.detail, "seconds": memo.seconds}
except ImportError:  # a torchkiln without the install memo
    memo = None
triton_memo = getattr(inductor_cache, "triton_report", lambda: None)() if memo is not None else None
triton_memo = None if triton_memo is None else {"state": triton_memo.state, "detail": triton_memo.detail,
                                                "seconds": triton_memo.seconds}
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
    "source_hashes": hashes, "install_memo": memo, "triton_memo": triton_memo,
    "torch_version": torch.__version__,
}))
"""

# What Inductor's source-tree hash costs a fresh process that needs it, with or without the install memo.
HASH_CHILD = r"""
import json, sys, time
import torch
from torch._inductor import codecache
try:  # imported before the clock starts: only the memo check and torch's hash are timed
    from torchkiln import inductor_cache
except ImportError:  # a torchkiln without the install memo
    inductor_cache = None
t0 = time.perf_counter()
state = None
if sys.argv[1] == "memo" and inductor_cache is not None:
    state = inductor_cache.prime_torch_key().state
t1 = time.perf_counter()
codecache.torch_key()
t2 = time.perf_counter()
print("PROFILE " + json.dumps({"prime_s": t1 - t0, "torch_key_s": t2 - t1, "total_s": t2 - t0, "memo": state}))
"""


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _fresh(work: Path) -> Path:
    """A new, empty Inductor cache folder: every profiled process starts like a new machine."""
    return Path(tempfile.mkdtemp(prefix="inductor-", dir=work))


#: the torchkiln the children import (``--src``: another checkout's ``src``, e.g. the code before a change)
_SRC = [str(Path(__file__).resolve().parents[1] / "src")]


def _child_env(inductor_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_dir)
    env["TRITON_CACHE_DIR"] = str(inductor_dir / "triton")
    # one per run, shared by its processes (like one machine): torchkiln's per-install state, the install memo
    env["XDG_CACHE_HOME"] = str(inductor_dir.parent / "xdg")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_SRC[0], env.get("PYTHONPATH")) if p)
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


def _median_record(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The first run with every numeric step (and ``.timings`` step) replaced by the median over ``runs``."""
    merged = dict(runs[0])
    for name, value in runs[0].items():
        if isinstance(value, float):
            merged[name] = statistics.median(r[name] for r in runs)
    merged["timings"] = {
        step: statistics.median(r["timings"][step] for r in runs if step in r["timings"]) for step in runs[0]["timings"]
    }
    return merged


def _load(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _print_report(report: dict[str, Any]) -> None:
    miss = report["miss"]
    hit = report["hit"]
    print(f"torchkiln from {report['src']}, torch {hit.get('torch_version')}, device {report['device']}")
    print(f"load average at start {_load(report['load_average_start'])}, at end {_load(report['load_average_end'])}")
    print(f"miss: hit={miss['hit']} compile call {miss['compile_call_s']:.2f} s, artifact {miss['artifact_bytes']} B")
    print(f"  install memo after the miss: {miss.get('install_memo')}")
    print(f"hit (empty Inductor caches): hit={[h['hit'] for h in report['hits']]}, median of {len(report['hits'])}")
    for step in ("import_torch_s", "import_torchkiln_s", "build_model_s", "compile_call_s", "first_call_s"):
        runs = " ".join(f"{h[step]:.3f}" for h in report["hits"])
        print(f"  {step:<24} {hit[step]:8.3f} s   (runs: {runs})")
    for step, seconds in hit["timings"].items():
        runs = " ".join(f"{h['timings'].get(step, float('nan')):.3f}" for h in report["hits"])
        print(f"    .timings[{step!r}]{'':<6} {seconds:8.3f} s   (runs: {runs})")
    runs = " ".join(f"{h['hit_to_first_output_s']:.3f}" for h in report["hits"])
    print(f"  hit_to_first_output_s    {hit['hit_to_first_output_s']:8.3f} s   (runs: {runs})")
    print(f"  install memo in the hits: {[h.get('install_memo') for h in report['hits']]}")
    print(f"  triton memo in the hits: {[h.get('triton_memo') for h in report['hits']]}")
    print(f"  modules imported by the hit: {hit['modules_imported_by_hit']}: {hit['module_groups']}")
    print("costliest imports after `import torch` (cumulative s, -X importtime, inflated by its own overhead):")
    for row in report["imports_after_torch"][:15]:
        print(f"  {row['cumulative_s']:7.3f}  {row['module']}")
    print("cProfile (compile + first call), top by cumulative time:")
    print("\n".join(report["cprofile_top"].splitlines()[-55:]))
    print("cProfile (first call), top by cumulative time:")
    print("\n".join(report["cprofile_first_call"].splitlines()[:40]))
    hashes = report["hit_cprofile"].get("source_hashes") or []
    print(f"source-tree hashes called by the hit (cProfile, compile + first call): {len(hashes) or 'none'}")
    for row in sorted(hashes, key=lambda r: -r["cumulative_s"]):
        print(f"  {row['cumulative_s']:7.3f} s  {row['calls']:4d} calls  {row['function']}")
        for caller in row["callers"][:3]:
            print(f"             <- {caller}")
    print("Inductor's torch_key() in a fresh process that needs it (medians):")
    for mode, records in report["torch_key"].items():
        med = {k: statistics.median(r[k] for r in records) for k in ("prime_s", "torch_key_s", "total_s")}
        totals = " ".join(f"{r['total_s']:.4f}" for r in records)
        print(
            f"  {mode:<6} prime {med['prime_s']:.4f} s + torch_key() {med['torch_key_s']:.4f} s"
            f" = {med['total_s']:.4f} s   (totals: {totals}; memo: {[r['memo'] for r in records]})"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--reps", type=int, default=3, help="fresh hit processes (and hash processes) per median")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--src", default=None, help="the torchkiln src dir the children import (default: this one)")
    args = parser.parse_args()
    if args.src:
        _SRC[0] = str(Path(args.src).resolve())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="torchkiln-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "tkcache"
    py = sys.executable
    base = [py, "-c", CHILD, args.model, args.device, str(cache)]

    report: dict[str, Any] = {"load_average_start": os.getloadavg(), "src": _SRC[0], "device": args.device}
    miss = _parse(_run([*base, "plain"], _child_env(_fresh(work)), args.timeout))
    report["miss"] = miss
    report["hits"] = [_parse(_run([*base, "plain"], _child_env(_fresh(work)), args.timeout)) for _ in range(args.reps)]
    report["hit"] = _median_record(report["hits"])
    proc = _run([py, "-X", "importtime", *base[1:], "plain"], _child_env(_fresh(work)), args.timeout)
    report["hit_importtime"] = _parse(proc)
    report["imports_after_torch"] = _importtime(proc.stderr)
    proc = _run([*base, "cprofile"], _child_env(_fresh(work)), args.timeout)
    report["hit_cprofile"] = _parse(proc)
    report["cprofile_top"], _, report["cprofile_first_call"] = proc.stderr.partition("FIRST CALL PROFILE\n")
    hash_base = [py, "-c", HASH_CHILD]
    report["torch_key"] = {
        mode: [_parse(_run([*hash_base, mode], _child_env(_fresh(work)), args.timeout)) for _ in range(args.reps)]
        for mode in ("plain", "memo")
    }
    report["load_average_end"] = os.getloadavg()

    _print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
