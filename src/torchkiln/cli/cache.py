"""``torchkiln compile|ls|inspect|verify|explain|gc|rm``: the commands that fill, read and prune the cache.

This module owns the cache commands' arguments and output (rich tables on a terminal, ``--json`` on stdout);
what they compute lives in ``cli/_cachelib.py``. Nothing here unpickles: ``ls``, ``inspect`` and ``explain``
read headers, ``verify`` hashes (and checks signatures), and only ``compile`` hands bytes to torch, through
``torchkiln.compile``. Exit codes: 0 ok, 1 a check failed (verify found a bad artifact, rm a missing key, a
prewarm could not publish), 2 bad arguments (a TARGET or SPEC that names nothing usable, a bad size).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, add_cache_option, add_json_option
from torchkiln.cli._cachelib import (
    FUNCTION_FORM,
    INPUTS_FORM,
    TARGET_FORM,
    UsageError,
    check_keys,
    parse_size,
    predict,
    read_artifact,
    read_header,
    request_key,
    resolve_inputs,
    resolve_target,
    stored_keys,
    verify_one,
)
from torchkiln.errors import TorchkilnError
from torchkiln.guard_fates import fate_counts
from torchkiln.store import ARTIFACT_SUFFIX, open_store

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the cache commands to the ``torchkiln`` parser."""
    inputs_help = f"example inputs: {INPUTS_FORM}; a single tensor or a kwargs dict is accepted too"

    def add_target(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", metavar="TARGET", help=f"{TARGET_FORM}; or {FUNCTION_FORM}")
        parser.add_argument("--inputs", required=True, metavar="SPEC", help=inputs_help)
        parser.add_argument("--function", action="store_true", help="TARGET is a function to compile as is")
        parser.add_argument("--name", default=None, help="key name prefix (default: the class/function name)")
        parser.add_argument("--dynamic", action="store_true", help="one artifact for a range of input sizes")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_, description=help_)
        add_cache_option(parser)
        add_json_option(parser)
        parser.set_defaults(handler=handler)
        return parser

    compile_ = add("compile", _compile, "compile TARGET on the example inputs into the cache (prewarm)")
    add_target(compile_)
    compile_.add_argument("--strict", action="store_true", help="raise instead of falling back to a compile")
    add("ls", _ls, "list the cached artifacts, most recently used first")
    inspect = add("inspect", _inspect, "show an artifact's header and sections (by .tkln path or by key)")
    inspect.add_argument("artifact", metavar="ARTIFACT|KEY")
    inspect.add_argument(
        "--guards", type=int, default=30, metavar="N", help="show N of the guards torch does not keep (default 30)"
    )
    verify = add("verify", _verify, "check hashes (and signatures, with a signing key) of cached artifacts")
    verify.add_argument("keys", nargs="*", metavar="KEY", help="keys or .tkln paths (none: every artifact)")
    verify.add_argument("--all", action="store_true", help="every artifact in the cache (the default)")
    explain = add("explain", _explain, "which key parts differ between TARGET's key and the nearest stored one")
    add_target(explain)
    gc = add("gc", _gc, "evict least recently used artifacts until the cache holds at most --max-size")
    gc.add_argument("--max-size", required=True, metavar="SIZE", help="bytes, or 500M, 2G (powers of 1024)")
    rm = add("rm", _rm, "delete artifacts by key (or every one with --all --yes)")
    rm.add_argument("keys", nargs="*", metavar="KEY")
    rm.add_argument("--all", action="store_true", help="delete every artifact (requires --yes)")
    rm.add_argument("--yes", action="store_true", help="confirm --all")


# -- output --------------------------------------------------------------------------------------------------


def _console() -> Console:
    # Piped output keeps whole keys on one line (for grep and xargs); a terminal gets its own width.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def _human_size(size: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while size >= 1024 and power < len(units) - 1:
        size, power = size / 1024, power + 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"


# -- commands ------------------------------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    from torchkiln import api

    target = resolve_target(args.target, function=args.function)
    ex_args, ex_kwargs = resolve_inputs(args.inputs)
    store = open_store(args.cache)
    status: AbstractContextManager[Any] = nullcontext()
    if not args.json or sys.stderr.isatty():
        status = Console(stderr=True).status(f"compiling {args.target} (or loading it from {store.url})")
    with status:
        compiled = api.compile(
            target, ex_args, example_kwargs=ex_kwargs, cache=store, name=args.name, dynamic=args.dynamic,
            strict=args.strict,
        )  # fmt: skip
    # A failed publish is only a warning inside torchkiln.compile; for a prewarm it is the whole point.
    published = compiled.hit or any(entry.key == compiled.key for entry in store.list())
    record = {
        "key": compiled.key,
        "hit": compiled.hit,
        "target": args.target,
        "cache": store.url,
        "published": published,
        "artifact_bytes": compiled.artifact_bytes,
        "timings": {name: round(seconds, 4) for name, seconds in compiled.timings.items()},
    }
    if args.json:
        _emit_json(record)
    else:
        console = _console()
        console.print(f"[bold]{'hit' if compiled.hit else 'miss'}[/bold]  {compiled.key}")
        console.print(f"cache {escape(store.url)}, artifact {_human_size(compiled.artifact_bytes)}")
        console.print("timings: " + ", ".join(f"{k} {v:.3f} s" for k, v in record["timings"].items()))
        if not published:
            console.print(
                f"[red]not published: the artifact is not in {escape(store.url)} (see the warning above)[/red]"
            )
    return EXIT_OK if published else EXIT_CHECK_FAILED


def _ls(args: argparse.Namespace) -> int:
    store = open_store(args.cache)
    rows: list[dict[str, Any]] = []
    for entry in sorted(store.list(), key=lambda e: (-e.last_used, e.key)):
        row: dict[str, Any] = {"key": entry.key, "size": entry.size, "last_used": _iso(entry.last_used)}
        row.update(target=None, created_at=None, torch_version=None, device=None)
        try:
            header = read_header(store, entry.key)
        except TorchkilnError as exc:
            row["error"] = exc.what
            header = None
        if header is not None:
            device = header.device_type or header.fingerprint.device_type
            if device != "cpu":
                device += f" ({header.fingerprint.device_name})"
            row.update(
                target=header.target,
                created_at=header.created_at,
                torch_version=header.fingerprint.torch_version,
                device=device,
            )
        rows.append(row)
    if args.json:
        _emit_json(rows)
        return EXIT_OK
    title = f"{store.url}: {len(rows)} artifacts, {_human_size(sum(r['size'] for r in rows))}"
    if not rows:
        _console().print(title, markup=False)
        return EXIT_OK
    table = Table(title=escape(title))
    table.add_column("key", no_wrap=True, overflow="fold")
    for name in ("target", "size", "created", "torch", "device", "last used"):
        table.add_column(name)
    for r in rows:
        target = escape(str(r["target"])) if r["target"] else f"[red]unreadable: {escape(r.get('error', ''))}[/red]"
        table.add_row(
            r["key"], target, _human_size(r["size"]), r["created_at"] or "", r["torch_version"] or "",
            r["device"] or "", r["last_used"],
        )  # fmt: skip
    _console().print(table)
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from torchkiln.artifact import decode, peek
    from torchkiln.header import ArtifactHeader

    path = Path(args.artifact)
    if path.is_file():
        data, where = path.read_bytes(), str(path)
    elif args.artifact.endswith(ARTIFACT_SUFFIX) or "/" in args.artifact or path.exists():
        # A path, not a key: "invalid cache key" would send the user looking in the wrong place.
        what = "is a directory, not an artifact file" if path.is_dir() else "does not exist"
        raise UsageError(f"no such artifact file: {args.artifact} {what}")
    else:
        store = open_store(args.cache)
        check_keys([args.artifact])
        found = read_artifact(store, args.artifact)
        if found is None:
            raise UsageError(f"{args.artifact!r} is neither a file nor a key in {store.url} (`torchkiln ls`)")
        data, where = found, f"{store.url} key {args.artifact}"
    peeked = peek(data, where=where)  # a corrupt header raises: nothing else can be shown
    header = ArtifactHeader.from_dict(peeked.header, where=where)
    try:
        signed: bool | None = decode(data, where=where).signed  # hashes only: decode never unpickles
        integrity = "ok (sections hashed; signature not checked: `torchkiln verify`)"
    except TorchkilnError as exc:
        signed, integrity = None, f"FAILED: {exc.what}"
    sections: list[dict[str, Any]] = [
        {"name": name, "bytes": length, "sha256": sha256} for name, length, sha256 in peeked.sections
    ]
    guards = list(header.guards)
    not_kept = [g for g in guards if g.get("fate") != "kept"]
    report = {
        "artifact": where,
        "bytes": len(data),
        "integrity": integrity,
        "signed": signed,
        "sections": sections,
        "guard_fates": fate_counts(guards),
        "header": {"format_version": peeked.format_version, **header.to_dict()},
    }
    if args.json:
        _emit_json(report)
        return EXIT_OK
    console = _console()
    fingerprint = header.fingerprint
    summary = Table.grid(padding=(0, 2))
    for label, value in (
        ("artifact", where),
        ("key", header.key),
        ("target", header.target),
        ("created", header.created_at),
        ("torchkiln", header.torchkiln_version),
        ("format", peeked.format_version),
        ("device", header.device_type),
        ("torch", f"{fingerprint.torch_version} ({fingerprint.torch_git_version})"),
        ("python", fingerprint.python_version),
        ("size", f"{_human_size(len(data))}, signed: {signed}"),
        ("integrity", integrity),
        ("compile s", json.dumps(dict(header.compile_seconds))),
        ("fixes applied", ", ".join(header.fixes_applied) or "none"),
        ("guard fates", ", ".join(f"{n} {fate}" for fate, n in fate_counts(guards).items())),
    ):
        summary.add_row(f"[bold]{label}[/bold]", escape(str(value)))
    console.print(summary)
    table = Table("section", "bytes", "sha256", title="sections")
    for s in sections:
        table.add_row(s["name"], str(s["bytes"]), s["sha256"][:16] + "...")
    console.print(table)
    if not_kept:
        table = Table("fate", "guard", "on", "checked as", title="guards torch does not keep (all: --json)")
        for guard in not_kept[: args.guards]:
            check = guard.get("check")
            table.add_row(
                str(guard.get("fate")),
                str(guard.get("guard_type")),
                escape(str(guard.get("name"))[:90]),
                escape(json.dumps(check)[:60] if check is not None else str(guard.get("why"))[:60]),
            )
        console.print(table)
        if len(not_kept) > args.guards:
            console.print(f"  ... {len(not_kept) - args.guards} more (--guards N)")
    sources = header.inlined_sources
    console.print(f"[bold]inlined sources[/bold] ({len(sources)})")
    for src in sources[:30]:
        console.print(
            f"  {src.get('module')}:{src.get('first_line')}-{src.get('last_line')} {src.get('path')}", markup=False
        )
    console.print(f"[bold]fingerprint[/bold] {escape(json.dumps(fingerprint.to_dict(), sort_keys=True))}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from torchkiln.settings import signing_key as configured_key

    if args.all and args.keys:
        raise UsageError("give KEYs or --all, not both")
    signing_key = configured_key()
    store = open_store(args.cache)
    results = []
    files = [k for k in args.keys if k.endswith(ARTIFACT_SUFFIX) and Path(k).is_file()]
    keys = [k for k in args.keys if k not in files] or ([] if files else sorted(e.key for e in store.list()))
    check_keys(keys)
    for name in files:
        results.append(verify_one(Path(name).read_bytes(), None, name, signing_key))
    for key in keys:
        results.append(verify_one(read_artifact(store, key), key, key, signing_key))
    bad = [r for r in results if r["status"] != "ok"]
    if args.json:
        _emit_json({"cache": store.url, "signature_checked": signing_key is not None, "results": results})
    else:
        console = _console()
        for r in results:
            colour = "green" if r["status"] == "ok" else "red"
            reason = f" ({r['reason']})" if "reason" in r else ""
            console.print(f"[{colour}]{r['status']:<12}[/{colour}] {escape(r['artifact'] + reason)}")
        checked = "hashes and signatures" if signing_key is not None else "hashes (no signing key configured)"
        console.print(f"verified {checked} of {len(results)} artifacts in {store.url}: {len(bad)} failed")
    return EXIT_CHECK_FAILED if bad else EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from torchkiln.cache_key import explain

    target = resolve_target(args.target, function=args.function)
    ex_args, ex_kwargs = resolve_inputs(args.inputs)
    store = open_store(args.cache)
    wanted = request_key(target, ex_args, ex_kwargs, name=args.name, dynamic=args.dynamic)
    stored, skipped = stored_keys(store)
    explanation = explain(wanted, stored)
    prediction = predict(store, target, ex_args, ex_kwargs, wanted)
    if args.json:
        _emit_json({**explanation.to_dict(), **prediction, "cache": store.url, "unreadable": skipped})
        return EXIT_OK
    console = _console()
    for line in explanation.lines():
        console.print(line, markup=False)
    for candidate in prediction["candidates"]:
        verdict = "fits" if candidate["fits"] else "does not fit"
        console.print(f"  {candidate['store_key']}: {verdict}: {candidate['reason']}", markup=False)
    if prediction["hit"]:
        console.print(
            f"next call: a hit on {prediction['store_key']} (if torch's kept guards and the per-call re-checks "
            "accept the call's inputs)",
            markup=False,
        )
    else:
        console.print("next call: a miss (compiles and publishes a new variant or key)", markup=False)
    for item in skipped:
        console.print(f"skipped unreadable artifact {item['key']}: {item['reason']}", markup=False)
    return EXIT_OK


def _gc(args: argparse.Namespace) -> int:
    max_size = parse_size(args.max_size)
    store = open_store(args.cache)
    before = sum(e.size for e in store.list())
    evicted = store.gc(max_size)
    after = sum(e.size for e in store.list())
    if args.json:
        _emit_json({"cache": store.url, "max_size": max_size, "bytes_before": before, "bytes_after": after,
                    "evicted": evicted})  # fmt: skip
        return EXIT_OK
    console = _console()
    for key in evicted:
        console.print(f"evicted {key}")
    console.print(f"{store.url}: {_human_size(before)} -> {_human_size(after)} ({len(evicted)} evicted)")
    return EXIT_OK


def _rm(args: argparse.Namespace) -> int:
    if args.all == bool(args.keys):
        raise UsageError("give one or more KEYs, or --all --yes")
    if args.all and not args.yes:
        raise UsageError("--all deletes every artifact in the cache: add --yes to confirm")
    check_keys(args.keys)
    store = open_store(args.cache)
    keys = sorted(e.key for e in store.list()) if args.all else args.keys
    results = [{"key": key, "deleted": store.delete(key)} for key in keys]
    missing = [r["key"] for r in results if not r["deleted"]]
    if args.json:
        _emit_json({"cache": store.url, "results": results})
    else:
        console = _console()
        for r in results:
            console.print(f"{'deleted' if r['deleted'] else 'missing'} {r['key']}")
        console.print(f"{store.url}: {len(results) - len(missing)} deleted, {len(missing)} not found")
    return EXIT_CHECK_FAILED if missing else EXIT_OK
