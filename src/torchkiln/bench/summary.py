"""Turn the children's raw records into the numbers the report shows: medians, ratios, targets, machine facts.

Everything here is arithmetic over one run's records: ratios are always between phases of the same run (same
machine, same load), never against numbers from elsewhere. The issue's targets are checked here too, each with
its limit and whether it was met, so BENCHMARKS.md and ``--json`` consumers read the same verdicts.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from typing import Any

from torchkiln._version import __version__

__all__ = ["NUMERIC_FIELDS", "machine_info", "summarize_model", "targets"]

#: Per-run numbers that get a median across repetitions.
NUMERIC_FIELDS = (
    "first_output_s",
    "import_torch_s",
    "setup_s",
    "prepare_s",
    "first_call_s",
    "process_s",
    "python_start_s",
    "per_call_ms",
    "artifact_bytes",
    "peak_rss_mb",
    "rss_first_mb",
    "preload_call_s",
    "weights_load_s",
    "preload_wait_s",
    "after_preload_s",
    "gc_setup_s",
    "gc_first_output_s",
)


def machine_info(device: str) -> dict[str, Any]:
    """What the results were measured on (torch facts are added from the children, which import it)."""
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "torchkiln_version": __version__,
        # Other work on the machine skews the numbers: record how busy it was.
        "loadavg_start": list(os.getloadavg()),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _median(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return statistics.median(numbers) if numbers else None


def _derive(run: dict[str, Any]) -> dict[str, Any]:
    """The preload scenario's split of its first output: the wait for preload's thread (``join_wait``: its work
    was not done when the weights were) and what is left once it is (``after_preload_s``)."""
    wait = (run.get("preload_timings") or {}).get("join_wait")
    first = run.get("first_output_s")
    if isinstance(wait, (int, float)) and isinstance(first, (int, float)):
        return {**run, "preload_wait_s": wait, "after_preload_s": first - wait}
    return run


def summarize_phase(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [_derive(r) for r in runs if r.get("ok")]
    summary: dict[str, Any] = {"n_ok": len(ok), "n_runs": len(runs)}
    for name in NUMERIC_FIELDS:
        summary[name] = _median([r.get(name) for r in ok])
    errors = sorted({str(r.get("error")) for r in runs if not r.get("ok")})
    if errors:
        summary["errors"] = errors
    diffs = [r["max_abs_diff"] for r in ok if isinstance(r.get("max_abs_diff"), (int, float))]
    if diffs:
        summary["max_abs_diff"] = max(diffs)
    hits = [r["hit"] for r in ok if "hit" in r]
    if hits:
        summary["hits"] = hits
    for field in ("tk_timings", "preload_timings"):
        timings = [r[field] for r in ok if isinstance(r.get(field), dict)]
        if timings:
            # The order torchkiln recorded the steps in is the order they ran: keep it.
            keys = list(dict.fromkeys(k for t in timings for k in t))
            summary[field] = {k: _median([t.get(k) for t in timings]) for k in keys}
    states = [r["preload_state"] for r in ok if "preload_state" in r]
    if states:
        summary["preload_states"] = states
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize_model(name: str, description: str, device: str, raw: dict[str, Any]) -> dict[str, Any]:
    phases = {p: {"summary": summarize_phase(runs), "runs": runs} for p, runs in raw["runs"].items()}
    cold = phases.get("compile_cold", {}).get("summary", {}).get("first_output_s")
    ratios = {p: _ratio(v["summary"].get("first_output_s"), cold) for p, v in phases.items() if p != "compile_cold"}
    model = {"description": description, "phases": phases, "prep": raw["prep"], "ratios_vs_cold": ratios}
    model["targets"] = targets(name, device, phases)
    return model


def targets(name: str, device: str, phases: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that this run can judge, each with value, limit and met (None: not measured)."""

    def get(phase: str, field: str) -> float | None:
        value = phases.get(phase, {}).get("summary", {}).get(field)
        return float(value) if isinstance(value, (int, float)) else None

    hit = get("tk_hit_empty", "first_output_s")
    checks: list[tuple[str, float | None, float, str]] = []
    if device == "cpu" and name in ("demo", "tiny"):
        checks += [
            (
                "hit (empty caches) / cold torch.compile",
                _ratio(hit, get("compile_cold", "first_output_s")),
                0.05,
                "x",
            ),
            (
                "hit (empty caches) / warm torch.compile",
                _ratio(hit, get("compile_warm", "first_output_s")),
                0.3,
                "x",
            ),
        ]
    if device == "cuda" and name in ("demo", "gpt2"):
        checks.append(("hit (empty caches) to first output after import torch", hit, 0.5, "s"))
        checks.append(
            ("hit (empty caches) / warm torch.compile", _ratio(hit, get("compile_warm", "first_output_s")), 0.25, "x")
        )
        checks.append(("preload: weights-ready to first output", get("tk_preload", "first_output_s"), 0.15, "s"))
    # Steady state is judged against the best torch.compile run: both paths run the same Inductor code.
    compiled = get("compile_warm", "per_call_ms") or get("compile_cold", "per_call_ms")
    checks.append(
        (
            "steady per call: hit / torch.compile",
            _ratio(get("tk_hit_empty", "per_call_ms"), compiled),
            1.05,
            "x",
        )
    )
    if name in ("demo", "tiny"):
        checks.append(("artifact size (MB)", _scaled(get("tk_miss", "artifact_bytes"), 1e-6), 2.0, "MB"))
    return [
        {
            "target": label,
            "value": value,
            "limit": limit,
            "unit": unit,
            "met": None if value is None else value <= limit,
        }
        for label, value, limit, unit in checks
    ]


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor
