"""Fleet benchmark: time to first output on a new machine that loads its artifact from S3 (issue 5, item 9).

    python benchmarks/fleet_bench.py [--model demo] [--reps 3] [--calls 20] [--threads 1]
                                     [--workdir DIR] [--json benchmarks/results/fleet-demo.json]

A "machine" is a fresh process with its own empty Inductor/Triton caches and its own empty torchkiln local root
(``XDG_CACHE_HOME``). The S3 side is moto's standalone server, started here on a free port of 127.0.0.1
(``tests/store/s3server.py``); the children get an AWS environment that points at it and at nothing else, so no
other address is ever contacted. Steps, each a fresh process running the harness's own child
(``torchkiln/bench/child.py``, so the numbers mean what they mean in BENCHMARKS.md):

  1. ``eager``: the reference output every other phase is compared against;
  2. ``build``: one ``torchkiln.compile`` miss with ``cache=s3://...`` (compile, publish to the bucket, keep a
     local copy: write-through), once;
  3. per repetition, in this order: ``fleet_hit`` (empty local root, empty Inductor caches, the artifact comes
     from the bucket), ``local_hit`` (the builder's local root as a plain path cache, empty Inductor caches),
     ``compile_cold`` (``torch.compile``, empty Inductor caches).

Medians over the repetitions, ratios between medians of this run, the load average at start and end, and
every child's raw record go to ``--json``; a Markdown table goes to stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUCKET = "torchkiln-fleet"
PHASES = ("fleet_hit", "local_hit", "compile_cold")
LABELS = {
    "eager": "eager, first call (reference)",
    "build": "torchkiln miss, publish to S3 (builder, 1 run)",
    "fleet_hit": "torchkiln hit from S3, empty local cache + Inductor caches",
    "local_hit": "torchkiln hit from a local cache, empty Inductor caches",
    "compile_cold": "torch.compile, empty caches",
}


def _load_s3server() -> ModuleType:
    """The tests' moto launcher: one way to start the loopback server, shared with the fleet tests."""
    path = REPO / "tests" / "store" / "s3server.py"
    spec = importlib.util.spec_from_file_location("torchkiln_fleet_s3server", path)
    if spec is None or spec.loader is None or not path.exists():
        raise SystemExit(f"fleet_bench needs {path} (run it from a torchkiln checkout)")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Fleet:
    """Runs harness children as "machines" against one loopback S3 endpoint."""

    def __init__(self, args: argparse.Namespace, workdir: Path, aws: dict[str, str]) -> None:
        self.args, self.workdir, self.aws = args, workdir, aws
        spec = importlib.util.find_spec("torchkiln.bench.child")
        if spec is None or spec.origin is None:
            raise SystemExit("torchkiln is not importable: use the project's .venv/bin/python")
        self.child = spec.origin

    def run(self, name: str, phase: str, *, xdg: Path | None = None, tk_cache: str | None = None) -> dict[str, Any]:
        """One fresh process: empty Inductor/Triton caches of its own, the given local root and store."""
        mdir = self.workdir / name
        mdir.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHKILN_", "AWS_"))}
        env.update(self.aws)
        env["TORCHINDUCTOR_CACHE_DIR"] = str(mdir / "inductor")
        env["TRITON_CACHE_DIR"] = str(mdir / "inductor" / "triton")
        env["XDG_CACHE_HOME"] = str(xdg if xdg is not None else mdir / "xdg")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
        result_path = mdir / "result.json"
        spec = {
            "phase": phase,
            "model": self.args.model,
            "device": "cpu",
            "calls": self.args.calls,
            "threads": self.args.threads,
            "ref": str(self.workdir / "ref.pt"),
            "result": str(result_path),
            "spawn_wall": time.time(),
            "tk_cache": tk_cache,
        }
        (mdir / "spec.json").write_text(json.dumps(spec))
        started = time.perf_counter()
        from torchkiln.bench.runner import run_in_own_session

        returncode = run_in_own_session(
            [sys.executable, self.child, str(mdir / "spec.json")], env, mdir / "log.txt", self.args.timeout
        )
        if result_path.exists():
            result: dict[str, Any] = json.loads(result_path.read_text())
        else:
            result = {"phase": phase, "ok": False, "error": f"no result (exit {returncode}; None: timed out)"}
        result.update(name=name, wall_s=time.perf_counter() - started)
        if xdg is not None and phase != "compile_cold":
            # Read-through: the bucket's artifact is now in this machine's local root too.
            result["local_copies"] = sorted(p.name for p in xdg.rglob("*") if p.is_file() and "lock" not in p.name)
        status = "ok" if result.get("ok") else f"FAILED: {str(result.get('error'))[:300]}"
        print(f"{name}: {status} first output {result.get('first_output_s')} s, wall {result['wall_s']:.1f} s")
        return result


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    from torchkiln.bench.summary import summarize_phase

    phases = {name: summarize_phase(rs) for name, rs in runs.items()}
    cold = phases.get("compile_cold", {}).get("first_output_s")
    local = phases.get("local_hit", {}).get("first_output_s")
    fleet = phases.get("fleet_hit", {}).get("first_output_s")
    ratios = {
        "fleet_hit_vs_cold": fleet / cold if fleet and cold else None,
        "fleet_hit_vs_local_hit": fleet / local if fleet and local else None,
        "local_hit_vs_cold": local / cold if local and cold else None,
    }
    return {"phases": phases, "ratios": ratios}


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"torch {meta.get('torch_version')}, {meta['cpu']} ({meta['cores']} cores), python {meta['python']}, "
        f"{meta['date']}, load average {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}, "
        f"wall {meta['wall_s']:.0f} s, S3: moto on 127.0.0.1",
        "",
        "| phase | first output (s) | vs cold | store_get (s) | load (s) | per call (ms) | artifact | runs ok |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    cold = results["summary"]["phases"]["compile_cold"].get("first_output_s")
    for name in ("eager", "build", *PHASES):
        s = results["summary"]["phases"][name]
        tk = s.get("tk_timings") or {}
        fo = s.get("first_output_s")

        def num(v: Any, spec: str) -> str:
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        lines.append(
            f"| {LABELS[name]} | {num(fo, '.2f')} | {num(fo / cold if fo and cold else None, '.3f')} "
            f"| {num(tk.get('store_get'), '.3f')} | {num(tk.get('load'), '.2f')} | {num(s.get('per_call_ms'), '.2f')} "
            f"| {num(s.get('artifact_bytes'), ',.0f')} | {s['n_ok']}/{s['n_runs']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20, help="steady-state calls per phase (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per phase (a shared machine)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase process")
    parser.add_argument("--workdir", help="keep caches, logs and records here (default: a temporary dir)")
    parser.add_argument("--json", dest="json_out", help="write the results here")
    args = parser.parse_args(argv)

    from torchkiln.bench.summary import machine_info

    s3server = _load_s3server()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="torchkiln-fleet-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    meta = machine_info("cpu")
    server = s3server.S3Server().start()
    try:
        server.make_bucket(BUCKET)
        url = f"s3://{BUCKET}/bench-{uuid.uuid4().hex[:8]}"
        meta["endpoint"] = server.endpoint
        fleet = Fleet(args, workdir, s3server.aws_env(server.endpoint))
        runs: dict[str, list[dict[str, Any]]] = {"eager": [], "build": [], **{p: [] for p in PHASES}}
        runs["eager"].append(fleet.run("eager", "eager"))
        builder_xdg = workdir / "builder-xdg"
        runs["build"].append(fleet.run("build", "tk_miss", xdg=builder_xdg, tk_cache=url))
        for rep in range(args.reps):
            runs["fleet_hit"].append(
                fleet.run(f"rep{rep}-fleet_hit", "tk_hit_empty", xdg=workdir / f"rep{rep}-fleet-xdg", tk_cache=url)
            )
            # The builder's local root read as a plain path: the same artifact, no network.
            local = str(builder_xdg / "torchkiln")
            runs["local_hit"].append(fleet.run(f"rep{rep}-local_hit", "tk_hit_empty", tk_cache=local))
            runs["compile_cold"].append(fleet.run(f"rep{rep}-compile_cold", "compile_cold"))
    finally:
        server.stop()
    meta["loadavg_end"] = list(os.getloadavg())
    meta["wall_s"] = time.perf_counter() - started
    for rs in runs.values():
        for r in rs:
            if r.get("torch_version"):
                meta.setdefault("torch_version", r["torch_version"])
    config = {k: v for k, v in vars(args).items() if k != "json_out"} | {"url": url, "workdir": str(workdir)}
    results = {"meta": meta, "config": config, "summary": summarize(runs), "runs": runs}
    print(markdown(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1) + "\n")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = all(r.get("ok") for rs in runs.values() for r in rs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
