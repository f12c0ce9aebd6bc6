"""``torchkiln ls|verify|gc|rm``: the commands over a cache's artifacts, each tier reported by itself.

On a tiered cache (``s3://...``) every row says which tier it comes from, the totals are per tier, nothing is
copied between tiers by looking, and a tier that cannot be read (a bucket that does not answer) is an error
(exit 1), never an empty listing. ``--tier local|remote`` restricts a command to one tier. Exit codes: 0 ok,
1 a check failed (a tier unreadable, a corrupt artifact, a missing key), 2 bad arguments.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, add_cache_option, add_json_option
from torchkiln.cli._cachelib import UsageError, check_keys, parse_size, read_artifact, read_header, verify_one
from torchkiln.cli._output import console, emit_json, human_size, iso
from torchkiln.cli._tiers import TIER_NAMES, Tier, select_tiers
from torchkiln.errors import StoreError, TorchkilnError
from torchkiln.store import ARTIFACT_SUFFIX, StoreEntry

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the listing commands to the ``torchkiln`` parser."""

    def add(name: str, handler: Any, help_: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help_, description=help_)
        add_cache_option(parser)
        add_json_option(parser)
        parser.add_argument("--tier", choices=TIER_NAMES, default=None, help="only this tier of a tiered cache")
        parser.set_defaults(handler=handler)
        return parser

    add("ls", _ls, "list the cached artifacts of each tier, most recently used first")
    verify = add("verify", _verify, "check hashes (and signatures, with a signing key) of cached artifacts")
    verify.add_argument("keys", nargs="*", metavar="KEY", help="keys or .tkln paths (none: every artifact)")
    verify.add_argument("--all", action="store_true", help="every artifact in the cache (the default)")
    gc = add("gc", _gc, "evict least recently used artifacts until each tier holds at most --max-size")
    gc.add_argument("--max-size", required=True, metavar="SIZE", help="bytes, or 500M, 2G (powers of 1024)")
    rm = add("rm", _rm, "delete artifacts by key (or every one with --all --yes) from each tier")
    rm.add_argument("keys", nargs="*", metavar="KEY")
    rm.add_argument("--all", action="store_true", help="delete every artifact (requires --yes)")
    rm.add_argument("--yes", action="store_true", help="confirm --all")


def _list(tier: Tier) -> tuple[list[StoreEntry], str | None]:
    try:
        return tier.store.list(), None
    except StoreError as exc:
        return [], str(exc)


def _tier_record(tier: Tier, entries: list[StoreEntry], error: str | None) -> dict[str, Any]:
    record: dict[str, Any] = {"name": tier.name, "url": tier.url, "artifacts": len(entries)}
    record["bytes"] = sum(e.size for e in entries)
    if error is not None:
        record["error"] = error
    return record


def _row(tier: Tier, entry: StoreEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"tier": tier.name, "key": entry.key, "size": entry.size, "last_used": iso(entry.last_used)}
    row.update(target=None, created_at=None, torch_version=None, device=None)
    try:
        header = read_header(tier.store, entry.key)
    except TorchkilnError as exc:
        row["error"] = exc.what
        return row
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
    return row


def _ls(args: argparse.Namespace) -> int:
    tiers = select_tiers(args.cache, args.tier)
    records, rows = [], []
    for tier in tiers:
        entries, error = _list(tier)
        records.append(_tier_record(tier, entries, error))
        rows += [_row(tier, e) for e in sorted(entries, key=lambda e: (-e.last_used, e.key))]
    failed = [r for r in records if "error" in r]
    if args.json:
        emit_json({"cache": tiers[0].url if len(tiers) == 1 else args.cache, "tiers": records, "artifacts": rows})
        return EXIT_CHECK_FAILED if failed else EXIT_OK
    out = console()
    for record in records:
        state = f"[red]cannot be read: {escape(record['error'])}[/red]" if "error" in record else ""
        out.print(
            f"{record['name']} {escape(record['url'])}: {record['artifacts']} artifacts, "
            f"{human_size(record['bytes'])} {state}".rstrip()
        )
    if rows:
        table = Table()
        table.add_column("key", no_wrap=True, overflow="fold")
        for name in ("tier", "target", "size", "created", "torch", "device", "last used"):
            table.add_column(name)
        for r in rows:
            target = escape(str(r["target"])) if r["target"] else f"[red]unreadable: {escape(r.get('error', ''))}[/red]"
            table.add_row(
                r["key"], r["tier"], target, human_size(r["size"]), r["created_at"] or "", r["torch_version"] or "",
                r["device"] or "", r["last_used"],
            )  # fmt: skip
        out.print(table)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from torchkiln.settings import signing_key as configured_key

    if args.all and args.keys:
        raise UsageError("give KEYs or --all, not both")
    signing_key = configured_key()
    tiers = select_tiers(args.cache, args.tier)
    files = [k for k in args.keys if k.endswith(ARTIFACT_SUFFIX) and Path(k).is_file()]
    given = [k for k in args.keys if k not in files]
    check_keys(given)
    results = [verify_one(Path(name).read_bytes(), None, name, signing_key) | {"tier": None} for name in files]
    records = []
    for tier in tiers:
        entries, error = _list(tier)
        records.append(_tier_record(tier, entries, error))
        if error is not None:
            continue
        keys = given or ([] if files else sorted(e.key for e in entries))
        for key in keys:
            try:
                data = read_artifact(tier.store, key)
            except StoreError as exc:
                results.append({"artifact": key, "tier": tier.name, "status": "unreadable", "reason": exc.what})
                continue
            if data is None and given and len(tiers) > 1:
                continue  # a key asked for is looked up in every tier; missing from one is not a failure
            results.append(verify_one(data, key, key, signing_key) | {"tier": tier.name})
    for key in given:  # asked for, found in no tier
        if not any(r["artifact"] == key for r in results):
            results.append({"artifact": key, "tier": None, "status": "missing"})
    bad = [r for r in results if r["status"] != "ok"]
    failed = [r for r in records if "error" in r]
    if args.json:
        emit_json({"signature_checked": signing_key is not None, "tiers": records, "results": results})
        return EXIT_CHECK_FAILED if bad or failed else EXIT_OK
    out = console()
    for r in results:
        colour = "green" if r["status"] == "ok" else "red"
        reason = f" ({r['reason']})" if "reason" in r else ""
        where = f"{r['tier']}: " if r.get("tier") else ""
        out.print(f"[{colour}]{r['status']:<12}[/{colour}] {escape(where + r['artifact'] + reason)}")
    checked = "hashes and signatures" if signing_key is not None else "hashes (no signing key configured)"
    for record in records:
        if "error" in record:
            out.print(f"[red]{record['name']} {escape(record['url'])} cannot be read: {escape(record['error'])}[/red]")
    out.print(
        f"verified {checked} of {len(results)} artifacts in {', '.join(r['url'] for r in records)}: {len(bad)} failed"
    )
    return EXIT_CHECK_FAILED if bad or failed else EXIT_OK


def _gc(args: argparse.Namespace) -> int:
    max_size = parse_size(args.max_size)
    records = []
    for tier in select_tiers(args.cache, args.tier):
        before, error = _list(tier)
        record: dict[str, Any] = {
            "tier": tier.name,
            "url": tier.url,
            "bytes_before": sum(e.size for e in before),
            "evicted": [],
        }
        if error is None:
            try:
                record["evicted"] = tier.store.gc(max_size)
                record["bytes_after"] = sum(e.size for e in tier.store.list())
            except StoreError as exc:
                error = str(exc)
        if error is not None:
            record["error"] = error
        records.append(record)
    failed = [r for r in records if "error" in r]
    if args.json:
        emit_json({"max_size": max_size, "tiers": records})
        return EXIT_CHECK_FAILED if failed else EXIT_OK
    out = console()
    for record in records:
        for key in record["evicted"]:
            out.print(f"evicted {record['tier']}: {key}")
        if "error" in record:
            out.print(f"[red]{record['tier']} {escape(record['url'])}: {escape(record['error'])}[/red]")
        else:
            out.print(
                f"{record['tier']} {escape(record['url'])}: {human_size(record['bytes_before'])} -> "
                f"{human_size(record['bytes_after'])} ({len(record['evicted'])} evicted)"
            )
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def _rm(args: argparse.Namespace) -> int:
    if args.all == bool(args.keys):
        raise UsageError("give one or more KEYs, or --all --yes")
    if args.all and not args.yes:
        raise UsageError("--all deletes every artifact in the cache: add --yes to confirm")
    check_keys(args.keys)
    results = []
    for tier in select_tiers(args.cache, args.tier):
        keys = sorted(e.key for e in tier.store.list()) if args.all else args.keys
        results += [{"tier": tier.name, "key": key, "deleted": tier.store.delete(key)} for key in keys]
    # A key is missing only if no tier held it (a local-only build was never in the bucket).
    missing = sorted({r["key"] for r in results} - {r["key"] for r in results if r["deleted"]})
    if args.json:
        emit_json({"results": results, "missing": missing})
    else:
        out = console()
        for r in results:
            if r["deleted"]:
                out.print(f"deleted {r['tier']}: {r['key']}")
        for key in missing:
            out.print(f"missing {key}")
        deleted = len({r["key"] for r in results if r["deleted"]})
        out.print(f"{deleted} deleted, {len(missing)} not found")
    return EXIT_CHECK_FAILED if missing else EXIT_OK
