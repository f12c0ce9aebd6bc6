"""``torchkiln compile|inspect|explain``: the commands that fill the cache and read one artifact or one request.

This module owns the cache commands' arguments and output (rich tables on a terminal, ``--json`` on stdout);
what they compute lives in ``cli/_cachelib.py``. Nothing here unpickles: ``ls``, ``inspect`` and ``explain``
read headers, ``verify`` hashes (and checks signatures), and only ``compile`` hands bytes to torch, through
``torchkiln.compile``. Exit codes: 0 ok, 1 a check failed (verify found a bad artifact, rm a missing key, a
prewarm could not publish), 2 bad arguments (a TARGET or SPEC that names nothing usable, a bad size).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from torchkiln import modes
from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, add_cache_option, add_json_option
from torchkiln.cli._cachelib import (
    FUNCTION_FORM,
    INPUTS_FORM,
    TARGET_FORM,
    UsageError,
    check_keys,
    predict,
    read_artifact,
    request_key,
    resolve_inputs,
    resolve_target,
    stored_keys,
)
from torchkiln.cli._output import console as make_console
from torchkiln.cli._output import emit_json, human_size
from torchkiln.cli._tiers import tiers_of
from torchkiln.errors import TorchkilnError
from torchkiln.guard_fates import fate_counts
from torchkiln.store import ARTIFACT_SUFFIX, LocalStore, open_store

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
        parser.add_argument(
            "--mode",
            choices=modes.MODES,
            default=None,
            help="torch.compile's mode (default: default); a max-autotune artifact carries its tuning results",
        )

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_, description=help_)
        add_cache_option(parser)
        add_json_option(parser)
        parser.set_defaults(handler=handler)
        return parser

    compile_ = add("compile", _compile, "compile TARGET on the example inputs into the cache (prewarm)")
    add_target(compile_)
    compile_.add_argument("--strict", action="store_true", help="raise instead of falling back to a compile")
    inspect = add("inspect", _inspect, "show an artifact's header and sections (by .tkln path or by key)")
    inspect.add_argument("artifact", metavar="ARTIFACT|KEY")
    inspect.add_argument(
        "--guards", type=int, default=30, metavar="N", help="show N of the guards torch does not keep (default 30)"
    )
    explain = add("explain", _explain, "which key parts differ between TARGET's key and the nearest stored one")
    add_target(explain)


# -- commands ------------------------------------------------------------------------------------------------


def _compile(args: argparse.Namespace) -> int:
    from torchkiln import api

    target = resolve_target(args.target, function=args.function)
    ex_args, ex_kwargs = resolve_inputs(args.inputs)
    store = open_store(args.cache)
    for tier in tiers_of(store):
        if isinstance(tier.store, LocalStore):
            tier.store.check_writable()  # a prewarm that cannot publish fails before the compile, not after it
    # progress.py shows the compile (and any wait for another process's lock) on stderr.
    compiled = api.compile(
        target, ex_args, example_kwargs=ex_kwargs, cache=store, name=args.name, dynamic=args.dynamic,
        mode=args.mode, strict=args.strict,
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
        emit_json(record)
    else:
        console = make_console()
        console.print(f"[bold]{'hit' if compiled.hit else 'miss'}[/bold]  {compiled.key}")
        console.print(f"cache {escape(store.url)}, artifact {human_size(compiled.artifact_bytes)}")
        console.print("timings: " + ", ".join(f"{k} {v:.3f} s" for k, v in record["timings"].items()))
        if not published:
            console.print(
                f"[red]not published: the artifact is not in {escape(store.url)} (see the warning above)[/red]"
            )
    return EXIT_OK if published else EXIT_CHECK_FAILED


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
        emit_json(report)
        return EXIT_OK
    console = make_console()
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
        ("size", f"{human_size(len(data))}, signed: {signed}"),
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


def _explain(args: argparse.Namespace) -> int:
    from torchkiln.cache_key import explain

    target = resolve_target(args.target, function=args.function)
    ex_args, ex_kwargs = resolve_inputs(args.inputs)
    store = open_store(args.cache)
    wanted = request_key(target, ex_args, ex_kwargs, name=args.name, dynamic=args.dynamic, mode=args.mode)
    stored, skipped = stored_keys(store)
    explanation = explain(wanted, stored)
    prediction = predict(store, target, ex_args, ex_kwargs, wanted)
    if args.json:
        emit_json({**explanation.to_dict(), **prediction, "cache": store.url, "unreadable": skipped})
        return EXIT_OK
    console = make_console()
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
