"""Smoke tests of the benchmark harness: well-formed results from real child processes, cheaply.

Only cheap phases run for real (eager on the one-layer ``tiny`` model); a compile phase is given a time limit
it cannot meet, which exercises the timeout path (the child and its process group are killed, the run goes
on, the failure is a row in the results). Rendering is checked on the results the harness produced.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest
from rich.console import Console

from torchkiln.bench import PHASES, BenchConfig, needed_phases, run_bench
from torchkiln.bench.report import render, to_markdown
from torchkiln.bench.summary import NUMERIC_FIELDS


def test_needed_phases_adds_dependencies_in_order() -> None:
    assert needed_phases(["tk_hit_empty", "compile_warm"]) == [
        "compile_cold",
        "compile_warm",
        "tk_miss",
        "tk_hit_empty",
    ]
    assert needed_phases(list(PHASES)) == list(PHASES)
    with pytest.raises(ValueError, match="unknown phase"):
        needed_phases(["nope"])


def _check_results(results: dict[str, Any], phases: list[str]) -> None:
    meta = results["meta"]
    for key in ("date", "cpu", "cores", "device", "torch_version", "loadavg_start", "loadavg_end", "wall_s"):
        assert key in meta, key
    model = results["models"]["tiny"]
    assert list(model["phases"]) == phases
    for phase in phases:
        summary = model["phases"][phase]["summary"]
        assert set(NUMERIC_FIELDS) <= set(summary)
        assert summary["n_runs"] == 1
    assert isinstance(model["targets"], list)
    json.dumps(results)  # everything in it is JSON


def test_cli_bench_json_eager(tmp_path: Any) -> None:
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torchkiln", "bench", "--model", "tiny", "--reps", "1", "--calls", "3"]
    cmd += ["--phases", "eager", "--json", "--quiet", "--out", str(out), "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == results
    _check_results(results, ["eager"])
    eager = results["models"]["tiny"]["phases"]["eager"]
    run = eager["runs"][0]
    assert run["ok"], run
    assert 0 < run["import_torch_s"] < run["process_s"]
    assert run["first_output_s"] > 0 and run["per_call_ms"] > 0 and run["peak_rss_mb"] > 10
    assert eager["summary"]["first_output_s"] == run["first_output_s"]
    assert (tmp_path / "w" / "tiny" / "ref.pt").exists()  # the reference the other phases compare against
    markdown = to_markdown(results)
    assert "| eager, first call |" in markdown and "torch " + results["meta"]["torch_version"] in markdown


def test_failed_phase_is_reported_not_fatal(tmp_path: Any) -> None:
    # 0.2 s is far too short to even import torch: the child is killed, and the result says so.
    config = BenchConfig(models=["tiny"], phases=["compile_cold"], reps=1, calls=1, timeout_s=0.2)
    messages: list[str] = []
    results = run_bench(config, progress=messages.append)
    summary = results["models"]["tiny"]["phases"]["compile_cold"]["summary"]
    assert summary["n_ok"] == 0 and "timed out" in summary["errors"][0]
    assert any("FAILED" in m for m in messages)
    console = Console(file=io.StringIO(), width=200)
    render(results, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "FAILED: timed out" in text and "torch.compile, empty caches" in text


def test_plot_writes_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    from torchkiln.bench.report import plot
    from torchkiln.bench.summary import machine_info, summarize_model

    runs = {
        "compile_cold": [{"ok": True, "first_output_s": 30.0, "per_call_ms": 1.0}],
        "tk_hit_empty": [{"ok": True, "first_output_s": 1.5, "per_call_ms": 1.0, "hit": True}],
    }
    model = summarize_model("tiny", "tiny", "cpu", {"runs": runs, "prep": {}})
    assert model["ratios_vs_cold"]["tk_hit_empty"] == pytest.approx(0.05)
    results = {"meta": machine_info("cpu") | {"torch_version": "x"}, "models": {"tiny": model}}
    plot(results, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_measures_the_warm_ratio_and_the_preload_scenario() -> None:
    """``torchkiln demo`` used to leave compile_warm out, so its "hit / warm torch.compile" target read "not
    measured"; it runs it now, and the preload scenario."""
    from torchkiln.bench.summary import targets
    from torchkiln.cli.bench import _DEMO_PHASES

    assert {"compile_cold", "compile_warm", "tk_hit_empty", "tk_preload"} <= set(_DEMO_PHASES)
    assert needed_phases(_DEMO_PHASES) == [p for p in PHASES if p in _DEMO_PHASES]

    def phase(first: float) -> dict[str, Any]:
        return {"summary": {"first_output_s": first, "per_call_ms": 1.0}}

    phases = {p: phase(s) for p, s in [("compile_cold", 20.0), ("compile_warm", 5.0), ("tk_hit_empty", 1.0)]}
    verdicts = {t["target"]: t for t in targets("demo", "cpu", phases)}
    warm = verdicts["hit (empty caches) / warm torch.compile"]
    assert warm["value"] == pytest.approx(0.2) and warm["met"] is True
    phases["tk_preload"] = phase(0.1)
    gpu = {t["target"]: t for t in targets("demo", "cuda", phases)}
    assert gpu["preload: weights-ready to first output"]["value"] == pytest.approx(0.1)
    assert gpu["hit (empty caches) / warm torch.compile"]["limit"] == 0.25


def test_once_phases_are_checked() -> None:
    with pytest.raises(ValueError, match="--once"):
        run_bench(BenchConfig(models=["tiny"], phases=["eager"], once=["tk_hit_empty"]))
