"""Run every forward fix's round trip on several torch installs and print the results as Markdown tables.

    python tools/compat_matrix.py .venv-torch2.10.0/bin/python .venv-torch2.11.0/bin/python ... > docs/COMPAT-matrix.md

For each Python (one virtual environment per torch release, ``make test-matrix`` builds them), in order:
1. ``python -c`` prints ``torchkiln.fixes()`` as JSON in a process that compiles nothing: torch version and each
   fix's state (``not-applicable`` / ``not-needed`` / ``needed``) as the live probes see it;
2. tests/compat/roundtrip.py saves every case in one process and loads it in another, for each case without each
   fix it proves (every other fix applied), with all fixes, and through ``torchkiln.compile`` (a strict cache hit).
torchkiln is imported from this repository's src/ in every environment (PYTHONPATH), so the matrix measures the
working tree. Progress goes to stderr; only the tables go to stdout. Exit 0 even when cases fail (a failure is a
result); exit 1 when a Python could not report at all, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
HELPER = REPO_ROOT / "tests" / "compat" / "roundtrip.py"

#: (case, fixes it proves) -> rows; mirrors tests/compat/roundtrip_cases.CASES (kept literal: the cases module
#: imports torch, and this tool must run under any Python).
CASES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("builtins", "`return x + 1, type`", ("builtins-runtime-env",)),
    ("range", "`return x + 1, range(3)`", ("module-globals",)),
    ("plain", "`return x + 1`", ("enable-aot-compile",)),
    ("ordered-dict", "nn.Module returning an OrderedDict subclass", ("module-globals",)),
    (
        "llama",
        "tiny LlamaForCausalLM (ModelOutput; kernels' function modules)",
        ("builtins-runtime-env", "module-globals", "self-pickling-local-modules"),
    ),
    ("dtype-attr", "nn.Module holding an unread `torch.float32`", ("guard-state-singletons",)),
    ("device-attr", "nn.Module holding an unread `torch.device`", ("guard-state-singletons",)),
    ("enum-attr", "nn.Module holding an unread enum member (also in a read list)", ("guard-state-singletons",)),
    ("paligemma", "tiny PaliGemmaForConditionalGeneration", ("guard-state-singletons",)),
)

FIXES_JSON = "import json, torchkiln; print(json.dumps([s.to_dict() for s in torchkiln.fixes()]))"


@dataclass
class EnvResult:
    python: str
    torch: str = "?"
    states: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, str] = field(default_factory=dict)  # job -> "ok" | "save: ..." | "load: ..."
    seconds: float = 0.0
    error: str | None = None


def jobs_for(cases: Sequence[str]) -> list[str]:
    jobs: list[str] = []
    for name, _, fixes in CASES:
        if name in cases:
            jobs += [f"raw/{name}/-{fix_id}" for fix_id in fixes]
            jobs += [f"raw/{name}/all", f"kiln/{name}/all"]
    return jobs


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def _run(cmd: Sequence[str], timeout: float) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, env=_env(), check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0][:300]}")
    return proc.stdout


def _helper(python: str, phase: str, workdir: Path, jobs: Sequence[str], timeout: float) -> dict[str, Any]:
    out = _run([python, str(HELPER), phase, str(workdir), *jobs], timeout)
    lines = [line for line in out.splitlines() if line.startswith("ROUNDTRIP ")]
    if not lines:
        raise RuntimeError(f"{phase}: the helper printed no result")
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("ROUNDTRIP "))
    return report


def _short(error: str) -> str:
    # Dynamo's global names carry per-process ids; normalise them so cells compare across torch releases.
    error = re.sub(r"_\d{6,}_c\d+", "_<id>_c<n>", error)
    error = re.sub(r"(__builtins_dict__)_\d+", r"\1_<n>", error)
    error = error.replace(". Please load AOT compiled function with `f_globals=<enclosing global scope>`", "")
    return error[:160]


def run_env(python: str, jobs: Sequence[str], workdir: Path, timeout: float) -> EnvResult:
    result = EnvResult(python)
    start = time.perf_counter()
    try:
        statuses = json.loads(_run([python, "-c", FIXES_JSON], timeout).strip().splitlines()[-1])
        result.states = {s["id"]: s["state"] for s in statuses}
        result.torch = _run([python, "-c", "import torch; print(torch.__version__)"], timeout).strip()
        save = _helper(python, "save", workdir, jobs, timeout)
        load = _helper(python, "load", workdir, jobs, timeout)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        result.seconds = time.perf_counter() - start
        return result
    loads = {job["job"]: job for job in load["jobs"]}
    for job in save["jobs"]:
        name = job["job"]
        if not job["ok"]:
            result.outcomes[name] = "save: " + _short(str(job["error"]))
        elif not loads[name]["ok"]:
            result.outcomes[name] = "load: " + _short(str(loads[name]["error"]))
        elif name.startswith("kiln/") and loads[name].get("hit") is not True:
            result.outcomes[name] = "load: not a cache hit"
        else:
            result.outcomes[name] = "ok"
    result.seconds = time.perf_counter() - start
    return result


def _version(result: EnvResult) -> str:
    return result.torch if result.error is None else f"{result.torch} ({Path(result.python).parent.parent.name})"


def render(results: Sequence[EnvResult], jobs: Sequence[str]) -> str:
    fix_ids: list[str] = []  # registry order, as the environments report it
    for r in results:
        fix_ids += [fix_id for fix_id in r.states if fix_id not in fix_ids]
    lines = [
        f"Run {datetime.datetime.now().astimezone().isoformat(timespec='minutes')} on {platform.node() or '?'} "
        f"({platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}) by `tools/compat_matrix.py`.",
        "",
        "### Fix states (`torchkiln.fixes()`, fresh process)",
        "",
        "| torch | " + " | ".join(f"`{i}`" for i in fix_ids) + " | wall s |",
        "|---" * (len(fix_ids) + 2) + "|",
    ]
    for r in results:
        cells = [r.states.get(i, "?") for i in fix_ids]
        lines.append(f"| {_version(r)} | " + " | ".join(cells) + f" | {r.seconds:.0f} |")
    lines += ["", "### Round trips (save in one process, load in another)", ""]
    lines.append("| case | variant | " + " | ".join(_version(r) for r in results) + " |")
    lines.append("|---" * (len(results) + 2) + "|")
    describe = {name: text for name, text, _ in CASES}
    for job in jobs:
        path, name, variant = job.split("/", 2)
        if path == "kiln":
            label = "`torchkiln.compile`, strict hit"
        elif variant == "all":
            label = "raw API, all fixes"
        else:
            label = f"raw API, without `{variant[1:]}`"
        cells = [r.outcomes.get(job, "n/a") if r.error is None else "not run" for r in results]
        lines.append(f"| {describe[name]} | {label} | " + " | ".join(cells) + " |")
    failed = [r for r in results if r.error is not None]
    if failed:
        lines += ["", "Could not run:", *(f"- `{r.python}`: {r.error}" for r in failed)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("pythons", nargs="+", help="the python of each environment, e.g. .venv-torch2.11.0/bin/python")
    parser.add_argument("--cases", default=",".join(c[0] for c in CASES), help="comma-separated case names")
    parser.add_argument("--workdir", type=Path, help="where artifacts go (default: a fresh temp dir per env)")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    ns = parser.parse_args(argv)
    names = [c for c in ns.cases.split(",") if c]
    unknown = sorted(set(names) - {c[0] for c in CASES})
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {[c[0] for c in CASES]}")
    jobs = jobs_for(names)
    results: list[EnvResult] = []
    with tempfile.TemporaryDirectory(prefix="tk-matrix-") as tmp:
        for index, python in enumerate(ns.pythons):
            workdir = (ns.workdir or Path(tmp)) / f"env{index}"
            print(f"[compat-matrix] {python}: {len(jobs)} jobs ...", file=sys.stderr, flush=True)
            result = run_env(python, jobs, workdir, ns.timeout)
            status = result.error or f"torch {result.torch}, {result.seconds:.0f} s"
            print(f"[compat-matrix] {python}: {status}", file=sys.stderr, flush=True)
            results.append(result)
    sys.stdout.write(render(results, jobs))
    return 1 if any(r.error is not None for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
