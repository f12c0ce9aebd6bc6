"""``torchkiln doctor``: what torchkiln sees in this environment, and whether it can do its job here.

Owns the environment report: python, torch (and its git version), triton, CUDA, the device, the cache in use
(writable? trusted?), whether a signing key is configured (never its value), and every forward fix with its
state, upstream reference and the torch release that fixed it upstream. Doctor runs ``compat.apply_fixes()``
in its own process, so the states it reports are the ones a compile would get: ``applied`` means "torchkiln
applies this fix when it compiles here". Exit 1 (a check failed) when torch is too old, a needed fix stays
needed after applying, a fix's probe could not run, the signing key setting is broken, or the cache cannot be
used (not private, not writable, not reachable): in each case compiles here fail, cannot be trusted, or are never
saved. Doctor exits 1 on every problem it shows; its ``warnings`` list stays for what does not stop anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from torchkiln._version import __version__
from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, add_cache_option, add_json_option
from torchkiln.compat import FixState, FixStatus
from torchkiln.errors import StoreError, TorchkilnError, UnsupportedTorchError

__all__ = ["cache_report", "collect", "fix_problems", "register", "signing_report"]

#: The detail text of a fix whose probe raised (compat.registry._probe); the registry then assumes the bug.


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="report python, torch, triton, CUDA, device, cache and the state of every forward fix",
        description="Report the environment and the state of every forward fix (applied = torchkiln applies it "
        "when compiling). Exit 1 when torch is too old, a needed fix cannot be applied or a probe fails.",
    )
    add_cache_option(doctor)
    add_json_option(doctor)
    doctor.set_defaults(handler=_doctor)


def fix_problems(before: Sequence[FixStatus], after: Sequence[FixStatus]) -> list[str]:
    """Why the fixes make torchkiln unusable here: a fix still needed after applying, or a probe that failed."""
    problems = [
        f"fix {s.id} is needed but could not be applied ({s.detail}); see {s.upstream}"
        for s in after
        if s.state is FixState.NEEDED
    ]
    problems += [
        f"the probe of fix {s.id} could not run ({s.detail}); report it with this output"
        for s in before
        if s.probe_failed
    ]
    return problems


def settings_report(environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Every ``TORCHKILN_*`` variable that is set (a key's value never shown), and what is wrong with them."""
    from torchkiln import settings
    from torchkiln.errors import ConfigError

    env = os.environ if environ is None else environ
    shown = {
        name: ("<set>" if name == settings.ENV_SIGNING_KEY else env[name]) for name in settings.VARIABLES if name in env
    }
    signing = (settings.ENV_SIGNING_KEY, settings.ENV_SIGNING_KEY_FILE)  # signing_report covers those two
    try:
        settings.current({k: v for k, v in env.items() if k not in signing})
    except ConfigError as exc:
        return {"set": shown, "error": exc.what}, [f"settings: {exc}"]
    return {"set": shown}, []


def signing_report(environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """Is an HMAC signing key configured, and where from (its value is never read into the report)."""
    from torchkiln.settings import ENV_SIGNING_KEY, ENV_SIGNING_KEY_FILE, signing_key

    env = os.environ if environ is None else environ
    source = next((name for name in (ENV_SIGNING_KEY, ENV_SIGNING_KEY_FILE) if name in env), None)
    try:
        configured = signing_key(env) is not None
    except TorchkilnError as exc:
        # torchkiln.compile raises the same error before any work: nothing can compile here until it is fixed.
        return {"configured": False, "source": source, "error": exc.what}, [f"signing key: {exc}"]
    return {"configured": configured, "source": source}, []


def _fixes() -> tuple[list[dict[str, Any]], list[str]]:
    from torchkiln import compat

    before = [compat.status(fix.id) for fix in compat.fixes()]
    problems: list[str] = []
    try:
        after = compat.apply_fixes()
    except Exception as exc:  # noqa: BLE001 - a fix's apply() broke on this torch: report it, do not hide the rest
        problems.append(f"applying the fixes failed ({type(exc).__name__}: {exc})")
        after = [compat.status(fix.id) for fix in compat.fixes()]
    problems += fix_problems(before, after)
    records = []
    for old, new in zip(before, after, strict=True):
        record = new.to_dict()
        record["state_before_apply"] = old.state.value
        if new.state is FixState.APPLIED and old.state is FixState.NEEDED:
            record["detail"] = f"{old.detail}; torchkiln applies it when compiling"
        records.append(record)
    return records, problems


def cache_report(url: str | None) -> tuple[dict[str, Any], list[str]]:
    from torchkiln.store import ENV_CACHE, LocalStore, default_local_root, open_store
    from torchkiln.store.tiered import TieredStore

    origin = "--cache" if url else ENV_CACHE if os.environ.get(ENV_CACHE) else "default"
    info: dict[str, Any] = {"url": url or os.environ.get(ENV_CACHE) or str(default_local_root()), "from": origin}
    try:
        store = open_store(url)
        info["url"] = store.url
        info["kind"] = type(store).__name__
        entries = store.list()  # a LocalStore checks ownership and permissions of its root on every call
        info.update(artifacts=len(entries), bytes=sum(e.size for e in entries))
    except StoreError as exc:
        info.update(usable=False, error=exc.what)
        return info, [f"cache: {exc}"]
    local = store.local if isinstance(store, TieredStore) else store
    if isinstance(local, LocalStore):
        created = local.dir.is_dir()
        # Nearest existing directory: a root that does not exist yet is created on the first compile.
        probe = next(p for p in (local.dir, *local.dir.parents) if p.exists())
        info.update(
            writable=os.access(probe, os.W_OK),
            trusted=True if created else None,  # list() above refused a root other users can write to
            created=created,
        )
        if not info["writable"]:
            return info, [f"cache: {probe} is not writable: set TORCHKILN_CACHE to a directory of yours"]
    info["usable"] = True
    return info, []


def _device(torch: Any) -> dict[str, Any]:
    from torchkiln.fingerprint import Fingerprint

    cpu = Fingerprint.current("cpu")
    device: dict[str, Any] = {
        "cpu_capability": cpu.cpu_capability,
        "cpu_isa": list(cpu.cpu_isa or ()),
        "machine": cpu.machine,
        "system": cpu.system,
    }
    cuda: dict[str, Any] = {"built_with": torch.version.cuda, "available": False, "devices": []}
    if torch.version.cuda is not None and torch.cuda.is_available():
        cuda["available"] = True
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            name = torch.cuda.get_device_name(index)
            cuda["devices"].append({"index": index, "name": name, "capability": f"{major}.{minor}"})
    device["type"] = "cuda" if cuda["available"] else "cpu"
    return {"triton": cpu.triton_version, "cuda": cuda, "device": device}


def collect(cache_url: str | None) -> dict[str, Any]:
    """The whole report as JSON-able data; ``problems`` make doctor exit 1, ``warnings`` do not."""
    import torch

    from torchkiln.compat import check_supported

    problems: list[str] = []
    warnings: list[str] = []
    torch_info: dict[str, Any] = {
        "version": str(torch.__version__),
        "git_version": str(torch.version.git_version),
        "path": str(Path(torch.__file__).parent),
        "supported": True,
    }
    try:
        check_supported()
    except UnsupportedTorchError as exc:
        torch_info["supported"] = False
        problems.append(str(exc))
    report: dict[str, Any] = {
        "torchkiln": __version__,
        "python": {
            "version": platform.python_version(),
            "implementation": sys.implementation.name,
            "executable": sys.executable,
        },
        "torch": torch_info,
        **_device(torch),
    }
    report["cache"], cache_problems = cache_report(cache_url)
    # An unusable cache runs every model uncached (a warning at each compile): the one thing torchkiln is for.
    problems += cache_problems
    report["settings"], settings_problems = settings_report()
    problems += settings_problems
    report["signing_key"], signing_problems = signing_report()
    problems += signing_problems
    report["fixes"] = []
    if torch_info["supported"]:  # below the minimum torch nothing compiles: probing fixes would only mislead
        report["fixes"], fix_problem_list = _fixes()
        problems += fix_problem_list
    report.update(ok=not problems, problems=problems, warnings=warnings)
    return report


def _print(report: Mapping[str, Any]) -> None:
    # Piped output gets wide lines (nothing truncated, grep-able); a terminal keeps its own width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    env = Table(title="torchkiln doctor", show_header=False)
    env.add_column(style="bold")
    env.add_column()
    py, tv, cuda, dev, cache = (report[k] for k in ("python", "torch", "cuda", "device", "cache"))
    gpus = ", ".join(f"{d['index']}: {d['name']} (sm {d['capability']})" for d in cuda["devices"])
    trusted = {True: "yes", False: "no", None: "checked when first created"}.get(cache.get("trusted", "n/a"), "n/a")
    writable = {True: "yes", False: "no"}.get(cache.get("writable", "n/a"), "n/a")
    cache_state = cache.get("error") or (
        f"{cache.get('artifacts', 0)} artifacts, {cache.get('bytes', 0)} bytes; writable: {writable}, "
        f"trusted: {trusted}"
    )
    signing = report["signing_key"]
    signing_state = signing.get("error") or (
        f"configured ({signing['source']})" if signing["configured"] else "not configured (unsigned artifacts accepted)"
    )
    for label, value in (
        ("torchkiln", report["torchkiln"]),
        ("python", f"{py['version']} ({py['implementation']}) {py['executable']}"),
        ("torch", f"{tv['version']} (git {tv['git_version']})" + ("" if tv["supported"] else " [red]too old[/red]")),
        ("triton", report["triton"] or "not installed"),
        ("CUDA", f"built with {cuda['built_with']}; " + (gpus if cuda["available"] else "no device available")),
        ("device", f"{dev['type']}; CPU {dev['cpu_capability']} {dev['machine']} {dev['system']}"),
        ("cache", f"{cache['url']} (from {cache['from']})"),
        ("", cache_state),
        ("signing key", signing_state),
        ("settings", ", ".join(f"{k}={v}" for k, v in report["settings"]["set"].items()) or "none set"),
    ):  # fmt: skip
        env.add_row(label, value if label in ("torch",) else escape(str(value)))
    console.print(env)
    if report["fixes"]:
        fixes = Table(title="forward fixes")
        for name in ("fix", "state", "fixed upstream in"):
            fixes.add_column(name, no_wrap=True)
        fixes.add_column("upstream")
        fixes.add_column("detail")
        colours = {"applied": "green", "needed": "red", "not-needed": "dim", "not-applicable": "dim"}
        for fix in report["fixes"]:
            colour = colours.get(fix["state"], "")
            state = f"[{colour}]{fix['state']}[/{colour}]" if colour else fix["state"]
            fixes.add_row(
                fix["id"], state, fix["fixed_in"] or "not yet", escape(fix["upstream"]), escape(fix["detail"])
            )
        console.print(fixes)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    for problem in report["problems"]:
        console.print(f"[red]problem:[/red] {escape(problem)}")
    console.print("[green]ok[/green]" if report["ok"] else f"[red]{len(report['problems'])} problem(s)[/red]")


def _doctor(args: argparse.Namespace) -> int:
    report = collect(args.cache)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        _print(report)
    return EXIT_OK if report["ok"] else EXIT_CHECK_FAILED
