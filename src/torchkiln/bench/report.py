"""Show benchmark results: rich tables (phases, targets, where a hit's time went) and an optional PNG chart.

Rendering only; the numbers come from ``summary``. matplotlib is an optional extra (``torchkiln[plot]``) and
is imported only when a chart is asked for.
"""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from torchkiln.bench.runner import PHASE_TITLES

__all__ = ["render", "render_model", "plot", "to_markdown"]


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return format(value * scale, spec)


def _size(nbytes: Any) -> str:
    if not isinstance(nbytes, (int, float)):
        return "-"
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= factor:
            return f"{nbytes / factor:.2f} {unit}"
    return f"{int(nbytes)} B"


def _status(summary: dict[str, Any], phase: str) -> Text:
    n_ok, n_runs = summary["n_ok"], summary["n_runs"]
    if n_ok == 0:
        error = (summary.get("errors") or ["failed"])[0].splitlines()[0]
        return Text(f"FAILED: {error[:90]}", style="red")
    notes = [f"{n_ok}/{n_runs} ok"]
    hits = summary.get("hits")
    if hits is not None:
        expected = phase != "tk_miss"
        if any(h != expected for h in hits):
            notes.append(f"hit={hits} (expected {expected})")
    diff = summary.get("max_abs_diff")
    if isinstance(diff, (int, float)) and diff > 1e-3:
        notes.append(f"max|diff| {diff:.2g}")
    return Text(", ".join(notes), style="yellow" if len(notes) > 1 or n_ok < n_runs else "green")


def render_model(name: str, model: dict[str, Any]) -> Group:
    table = Table(title=f"{name}: {model['description']}", title_justify="left")
    for column, justify in (
        ("phase", "left"),
        ("first output (s)", "right"),
        ("vs cold", "right"),
        ("import torch (s)", "right"),
        ("per call (ms)", "right"),
        ("artifact", "right"),
        ("peak RSS (MB)", "right"),
        ("status", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for phase, data in model["phases"].items():
        s = data["summary"]
        ratio = model["ratios_vs_cold"].get(phase, 1.0 if phase == "compile_cold" else None)
        table.add_row(
            PHASE_TITLES.get(phase, phase),
            _fmt(s.get("first_output_s"), ".3f"),
            _fmt(ratio, ".3f") + ("x" if ratio is not None else ""),
            _fmt(s.get("import_torch_s"), ".2f"),
            _fmt(s.get("per_call_ms"), ".2f"),
            _size(s.get("artifact_bytes")),
            _fmt(s.get("peak_rss_mb"), ".0f"),
            _status(s, phase),
        )
    parts: list[Any] = [table]
    prep = model.get("prep") or {}
    if prep:
        lines = [
            f"  {kind}: "
            + (
                f"built in {_fmt(p.get('build_s'), '.1f')} s, {_size(p.get('artifact_bytes'))}"
                if p.get("ok")
                else f"FAILED: {str(p.get('error'))[:120]}"
            )
            for kind, p in prep.items()
        ]
        parts.append(Text("artifacts for the load phases:\n" + "\n".join(lines)))
    hit = model["phases"].get("tk_hit_empty", {}).get("summary", {})
    timings = hit.get("tk_timings")
    if timings:
        # min_width: else rich wraps the title to the width of the two narrow columns.
        where = Table(
            title="where the torchkiln hit's time went (empty caches, median .timings)",
            title_justify="left",
            min_width=70,
        )
        where.add_column("step")
        where.add_column("seconds", justify="right")
        for step, seconds in timings.items():
            where.add_row(step, _fmt(seconds, ".4f"))
        where.add_row("garbage collector, compile call to first output", _fmt(hit.get("gc_first_output_s"), ".4f"))
        parts.append(where)
    preload = model["phases"].get("tk_preload", {}).get("summary", {})
    if preload.get("preload_timings"):
        pre = Table(
            title="the preload scenario (median; preload's thread ran while the weights were read)",
            title_justify="left",
            min_width=70,
        )
        pre.add_column("step")
        pre.add_column("seconds", justify="right")
        for step, value in (
            ("preload() call (the caller waits for this only)", preload.get("preload_call_s")),
            ("weights read from the file", preload.get("weights_load_s")),
            *((f"preload thread: {k}", v) for k, v in preload["preload_timings"].items()),
            ("weights-ready to first output", preload.get("first_output_s")),
            ("  of which waiting for the preload thread", preload.get("preload_wait_s")),
            ("  the rest (the load and first call once preload is done)", preload.get("after_preload_s")),
            ("garbage collector, compile call to first output (any thread)", preload.get("gc_first_output_s")),
        ):
            pre.add_row(step, _fmt(value, ".4f"))
        parts.append(pre)
    if model.get("targets"):
        tgt = Table(title="targets (ratios within this run)", title_justify="left")
        for column in ("target", "value", "limit", "verdict"):
            tgt.add_column(column)
        for t in model["targets"]:
            verdict = {True: Text("met", "green"), False: Text("missed", "red"), None: Text("not measured")}[t["met"]]
            tgt.add_row(t["target"], _fmt(t["value"], ".3f"), f"<= {t['limit']:g} {t['unit']}", verdict)
        parts.append(tgt)
    return Group(*parts)


def render(results: dict[str, Any], console: Console | None = None) -> None:
    # Piped output (a log, a file) would otherwise wrap at 80 columns and break the table's rows apart.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    meta = results["meta"]
    console.print(
        f"torch {meta.get('torch_version', '?')} on {meta['device']}"
        + (f" ({meta['device_name']})" if meta.get("device_name") else "")
        + f"; {meta['cpu']}, {meta['cores']} cores; {meta['date']};"
        + f" load average {meta['loadavg_start'][0]:.1f} -> {meta.get('loadavg_end', ['?'])[0]}"
    )
    for name, model in results["models"].items():
        console.print(render_model(name, model))


def plot(results: dict[str, Any], path: str) -> None:
    """A grouped bar chart of median time to first output per phase and model (log scale), saved as PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never needs a display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install 'torchkiln[plot]'") from exc
    models = list(results["models"])
    phases = [p for p in PHASE_TITLES if any(p in results["models"][m]["phases"] for m in models)]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(phases) * max(1, len(models))), 5))
    width = 0.8 / max(1, len(models))
    for i, name in enumerate(models):
        values = [
            results["models"][name]["phases"].get(p, {}).get("summary", {}).get("first_output_s") or 0.0 for p in phases
        ]
        xs = [j + i * width for j in range(len(phases))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v else "n/a" for v in values], fontsize=7, rotation=90)
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(phases))])
    ax.set_xticklabels([PHASE_TITLES[p] for p in phases], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("time to first output, s (median, log scale)")
    top = max((b.get_height() for b in ax.patches), default=1.0) or 1.0
    ax.set_ylim(top=top * 4)  # room for the value labels above the tallest bar
    meta = results["meta"]
    ax.set_title(f"torchkiln bench: torch {meta.get('torch_version', '?')}, {meta['device']}, {meta['date'][:10]}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (for BENCHMARKS.md): machine line, phases, targets, per model."""
    meta = results["meta"]
    device = meta["device"] + (f" ({meta['device_name']})" if meta.get("device_name") else "")
    load = f"{meta['loadavg_start'][0]:.1f} -> {meta.get('loadavg_end', ['?'])[0]:.1f}"
    lines = [
        f"torch {meta.get('torch_version', '?')}, {device}, {meta['cpu']} ({meta['cores']} cores), "
        f"python {meta['python']}, {meta['date']}, load average {load}, wall {meta.get('wall_s', 0):.0f} s",
        "",
    ]
    for name, model in results["models"].items():
        lines += [
            f"**{name}**: {model['description']}",
            "",
            "| phase | first output (s) | vs cold | import torch (s) | per call (ms) | artifact "
            "| peak RSS (MB) | runs ok |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for phase, data in model["phases"].items():
            s = data["summary"]
            ratio = model["ratios_vs_cold"].get(phase, 1.0 if phase == "compile_cold" else None)
            status = f"{s['n_ok']}/{s['n_runs']}"
            if s["n_ok"] == 0 and s.get("errors"):
                status += " " + s["errors"][0].splitlines()[0][:80].replace("|", "/")
            lines.append(
                f"| {PHASE_TITLES.get(phase, phase)} | {_fmt(s.get('first_output_s'), '.2f')} | {_fmt(ratio, '.3f')} "
                f"| {_fmt(s.get('import_torch_s'), '.2f')} | {_fmt(s.get('per_call_ms'), '.2f')} "
                f"| {_size(s.get('artifact_bytes'))} | {_fmt(s.get('peak_rss_mb'), '.0f')} | {status} |"
            )
        lines += ["", "| target | value | limit | verdict |", "| --- | ---: | ---: | --- |"]
        for t in model.get("targets", []):
            verdict = {True: "met", False: "missed", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {_fmt(t['value'], '.3f')} | <= {t['limit']:g} {t['unit']} | {verdict} |")
        lines.append("")
    return "\n".join(lines)
