"""``torchkiln bench`` and ``torchkiln demo``: the benchmark harness and the fresh-machine demo.

``bench`` runs every phase of ``torchkiln.bench`` (each in a fresh process) for the chosen models and prints a
table, or JSON with ``--json``; ``--plot`` writes a PNG chart. ``demo`` is ``make demo``: it compiles the demo
model into the torchkiln cache (the default one, or ``--cache``), loads it in a fresh process with empty
Inductor caches, and shows the table next to a cold and a warm-cache ``torch.compile``, the preload scenario and
where the hit's time went.
Progress lines go to stderr so that ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, add_cache_option, add_json_option

__all__ = ["register"]

_ALL_MODELS = ("demo", "gpt2", "vit")
#: compile_warm: the hit is judged against what users have today, a torch.compile with warm local caches (the demo
#: used to leave it out, so its "hit / warm torch.compile" target read "not measured"); tk_preload: the inference
#: server pattern (preload, read the weights, compile).
_DEMO_PHASES = ["eager", "compile_cold", "compile_warm", "tk_miss", "tk_hit_empty", "tk_preload"]


def register(subparsers: Any) -> None:
    from torchkiln.bench import MODELS, PHASES

    bench = subparsers.add_parser(
        "bench",
        help="time to first output of torchkiln against every PyTorch option, each phase in a fresh process",
        description="Run each phase in a fresh process with its own Inductor/Triton caches; report medians "
        "over --reps repetitions and ratios within this run. Phases: " + ", ".join(PHASES) + ".",
    )
    bench.add_argument("--model", default="demo", choices=[*MODELS, "all"], help="model to run; all = demo, gpt2, vit")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--reps", type=int, default=3, help="repetitions per phase (median reported)")
    bench.add_argument("--calls", type=int, default=50, help="timed calls for the steady-state median")
    bench.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in every phase")
    bench.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset of phases")
    bench.add_argument("--timeout", type=float, default=1200.0, help="time limit of one phase's process, s")
    bench.add_argument(
        "--deadline", type=float, default=None, help="time budget of the whole run, s (phases left: skipped)"
    )
    bench.add_argument(
        "--once",
        default="",
        help="comma-separated phases run in the first repetition only (eager, compile_cold, tk_miss): later "
        "repetitions reuse what they left",
    )
    bench.add_argument("--workdir", default=None, help="keep caches, artifacts and logs here")
    bench.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    bench.add_argument("--plot", metavar="PATH", default=None, help="write a PNG bar chart (needs [plot])")
    bench.add_argument("--out", metavar="PATH", default=None, help="also write the JSON results to PATH")
    bench.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_cache_option(bench)
    add_json_option(bench)
    bench.set_defaults(handler=_bench)

    demo = subparsers.add_parser(
        "demo",
        help="compile the demo model into the cache, load it in a fresh process, show where the time went",
    )
    demo.add_argument("--timeout", type=float, default=1200.0, help="time limit of one phase's process, s")
    demo.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_cache_option(demo)
    add_json_option(demo)
    demo.set_defaults(handler=_demo)


def _progress(args: argparse.Namespace) -> Any:
    err = Console(stderr=True)
    return None if args.quiet else (lambda msg: err.print(f"[dim]{msg}[/dim]", highlight=False))


def _bench(args: argparse.Namespace) -> int:
    from torchkiln.bench import BenchConfig, run_bench

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if args.reps < 1 or args.calls < 0:
        sys.stderr.write("torchkiln bench: error: --reps must be >= 1 and --calls >= 0\n")
        return EXIT_USAGE
    config = BenchConfig(
        models=list(_ALL_MODELS) if args.model == "all" else [args.model],
        device=args.device,
        phases=phases,
        reps=args.reps,
        calls=args.calls,
        threads=args.threads,
        timeout_s=args.timeout,
        deadline_s=args.deadline,
        workdir=args.workdir,
        keep=args.keep,
        tk_cache=args.cache,
        once=[p.strip() for p in args.once.split(",") if p.strip()],
    )
    try:
        results = run_bench(config, progress=_progress(args), on_update=_checkpoint(args.out))
    except ValueError as exc:  # unknown phase or model
        sys.stderr.write(f"torchkiln bench: error: {exc}\n")
        return EXIT_USAGE
    return _emit(args, results)


def _demo(args: argparse.Namespace) -> int:
    from torchkiln.bench import BenchConfig, run_bench

    config = BenchConfig(
        models=["demo"],
        phases=_DEMO_PHASES,
        reps=1,
        calls=20,
        timeout_s=args.timeout,
        tk_cache=args.cache,
        tk_cache_exact=True,  # the point of the demo: the artifact stays in the user's cache
    )
    results = run_bench(config, progress=_progress(args))
    code = _emit(args, results)
    if not args.json:
        _demo_summary(results["models"]["demo"])
    return code


def _demo_summary(model: dict[str, Any]) -> None:
    out = Console(width=None if sys.stdout.isatty() else 160)
    phases = model["phases"]
    miss = phases["tk_miss"]["summary"]
    hit = phases["tk_hit_empty"]["summary"]
    cold = phases["compile_cold"]["summary"].get("first_output_s")
    if miss.get("hits") and miss["hits"][0]:
        out.print(
            "note: the demo artifact was already in the cache (an earlier demo), so the 'miss' phase loaded"
            " it; remove it with `torchkiln rm KEY` to time a real compile again."
        )
    warm = phases.get("compile_warm", {}).get("summary", {}).get("first_output_s")
    seconds = hit.get("first_output_s")
    if isinstance(seconds, float) and isinstance(cold, float) and seconds > 0:
        versus = f"{cold / seconds:.1f}x faster than a cold torch.compile ({cold:.1f} s)"
        if isinstance(warm, float):
            versus += f" and {warm / seconds:.1f}x faster than torch.compile with warm caches ({warm:.1f} s)"
        out.print(
            f"torchkiln hit with empty Inductor caches: {seconds:.2f} s to first output (after import torch"
            f" and model build), {versus}."
        )
    preloaded = phases.get("tk_preload", {}).get("summary", {}).get("first_output_s")
    if isinstance(preloaded, float):
        out.print(
            f"with torchkiln.preload() at the top of the program (while the weights are read from a file):"
            f" {preloaded:.2f} s from weights-ready to first output."
        )


def _checkpoint(path: str | None) -> Any:
    """Write the results so far to ``--out`` after every phase: a run cut short still leaves its numbers."""
    if not path:
        return None

    def write(results: dict[str, Any]) -> None:
        tmp = Path(path + ".tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        tmp.replace(path)

    return write


def _emit(args: argparse.Namespace, results: dict[str, Any]) -> int:
    from torchkiln.bench.report import plot, render

    text = json.dumps(results, indent=2, sort_keys=False, default=str)
    if getattr(args, "out", None):
        Path(args.out).write_text(text + "\n")
    if args.json:
        sys.stdout.write(text + "\n")
    else:
        render(results)
    if getattr(args, "plot", None):
        try:
            plot(results, args.plot)
        except RuntimeError as exc:
            sys.stderr.write(f"torchkiln {args.command}: {exc}\n")
            return EXIT_USAGE
    ran = [p for m in results["models"].values() for p in m["phases"].values() if p["summary"]["n_ok"]]
    # One failed phase is a row in the table; a run where nothing at all worked is a failed check.
    return EXIT_OK if ran else EXIT_CHECK_FAILED
