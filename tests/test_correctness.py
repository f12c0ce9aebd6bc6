"""Never a wrong answer: what changes a traced graph never loads the artifact built without the change.

One process compiles the unchanged targets (tests/helpers/guard_cases.py); then every case runs in a FRESH process
with its own empty Inductor caches: it applies one change (an attribute, a module global read from the environment
at import, a class attribute, a closure cell, a config attribute, train mode, a submodule's class, parameter dtype,
an input requiring grad, grad mode, the default dtype, autocast, deterministic mode), compiles through torchkiln
and compares with eager computed in that process. A change must never be served the baseline's artifact: it is a
miss (another specialization: another key; or another variant of the same key). What must not split the cache
(new weight values, another working directory, unrelated per-machine environment variables, another pid and
time) must hit. Each case also runs a second time in another fresh process: the artifact its first run published
must then be found (a hit), and right.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from helpers import guard_cases
from helpers.procs import HELPERS, parse_result, run_script

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="Inductor's CPU backend needs g++"),
    pytest.mark.compat,  # the 2.11 compat lane runs every case
]

CHILD = HELPERS / "guard_case_child.py"
#: fp32 round-off; bf16 autocast and fp64 cases are compared at their own precision below
TOL = {"autocast": 5e-2}
DEFAULT_TOL = 1e-5


def _run(cache: Path, scratch: Path, cases: list[str], env: dict[str, str] | None = None, cwd: Path | None = None):
    proc = run_script([str(CHILD), str(cache), *cases], scratch, extra_env=env, cwd=cwd)
    results: list[dict[str, Any]] = parse_result(proc.stdout)  # type: ignore[assignment]
    return results


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("correctness")
    cache = root / "cache"
    baseline = _run(cache, root / "baseline", ["baseline"])
    for record in baseline:
        assert record["error"] is None, record
        assert record["hit"] is False
        assert record["max_diff"] <= DEFAULT_TOL
    (cache / "baseline.json").write_text(json.dumps(baseline))
    return cache


def _baseline_key(cache: Path, case: str) -> str:
    records = json.loads((cache / "baseline.json").read_text())
    target = guard_cases.CASES[case].get("target")
    target = f"{target}_same" if target else "same"
    return next(r["store_key"] for r in records if r["case"] == target)


#: The default lane's representative subset (about 30 s a case on 2 cores): one of each mechanism, a module global
#: and a closure cell (re-checked), a class attribute (kept and re-checked), a config attribute (kept), autocast
#: (keyed), a self-pickling local module's wrapped function (re-checked), and what must hit. Every case runs in the
#: slow lane and in the 2.11 compat lane.
DEFAULT_LANE = {"module_global", "class_attribute", "closure_cell", "config_attribute", "autocast", "same"}
DEFAULT_LANE |= {"new_weights", "unrelated_env", "hub_func_swapped"}


@pytest.mark.parametrize(
    "case", [c if c in DEFAULT_LANE else pytest.param(c, marks=pytest.mark.slow) for c in sorted(guard_cases.CASES)]
)
def test_case_is_right_in_a_fresh_process(case: str, cache: Path, tmp_path: Path) -> None:
    spec = guard_cases.CASES[case]
    env = dict(spec.get("env") or {})
    cwd = tmp_path if spec.get("cwd") else None
    tol = TOL.get(case, DEFAULT_TOL)
    baseline = _baseline_key(cache, case)
    (first,) = _run(cache, tmp_path / "first", [case], env, cwd)
    assert first["error"] is None, first
    assert first["max_diff"] <= tol, first
    assert first["predicted_hit"] == first["hit"], "torchkiln explain predicted otherwise"
    if spec.get("must_hit"):
        assert first["hit"] is True, first
        assert first["store_key"] == baseline
        assert first["warnings"] == []
        return
    # Never the baseline's artifact: a miss, as another specialization (key) or another variant (same key).
    assert first["store_key"] != baseline, first
    assert first["hit"] is False, first
    assert not [w for w in first["warnings"] if "does not fit" in w], first
    # A second fresh process under the same change finds what the first published.
    (second,) = _run(cache, tmp_path / "second", [case], env, cwd)
    assert second["error"] is None, second
    assert second["max_diff"] <= tol, second
    assert second["hit"] is True, second
    assert second["predicted_hit"] is True
    assert second["store_key"] == first["store_key"]
