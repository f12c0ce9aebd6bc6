"""``torchkiln push`` and ``torchkiln pull``: copy artifacts between this machine's cache and a shared store.

Owns the fleet command group. ``push`` uploads what a builder (or a machine that compiled while the bucket was
down) has locally; ``pull`` prewarms a machine before it serves. Both verify every artifact's lengths and
hashes (and its signature when ``TORCHKILN_SIGNING_KEY`` is set) before copying it, so one corrupt file
cannot spread through the fleet, and both publish write-once: an existing key is reported, never replaced.
``ls``/``verify``/``gc`` on remote URLs are the cache commands with ``--cache s3://...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from torchkiln.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, add_cache_option, add_json_option
from torchkiln.errors import TorchkilnError
from torchkiln.store.base import Store

__all__ = ["register"]

#: Outcomes per key; the ones in FAILED make the command exit 1.
COPIED, EXISTS, MISSING, INVALID = "copied", "exists", "missing", "invalid"
FAILED = (MISSING, INVALID)


def register(subparsers: Any) -> None:
    """Add ``push`` and ``pull`` to the ``torchkiln`` parser."""
    push = subparsers.add_parser(
        "push",
        help="upload artifacts from the local cache to a shared store",
        description="Upload KEY (or --all) from the local cache (--cache) to the store at --to URL.",
    )
    _add_selection(push)
    push.add_argument("--to", required=True, metavar="URL", help="destination, e.g. s3://bucket/prefix")
    add_cache_option(push)
    add_json_option(push)
    push.set_defaults(handler=_push)

    pull = subparsers.add_parser(
        "pull",
        help="download artifacts from a shared store into the local cache",
        description="Download KEY (or --all) from the store at --from URL into the local cache (--cache).",
    )
    _add_selection(pull)
    pull.add_argument("--from", dest="source", required=True, metavar="URL", help="e.g. s3://bucket/prefix")
    add_cache_option(pull)
    add_json_option(pull)
    pull.set_defaults(handler=_pull)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", nargs="?", metavar="KEY", help="the artifact's key (see `torchkiln ls`)")
    parser.add_argument("--all", action="store_true", help="every artifact in the source")


def _local_tier(url: str | None) -> Store:
    """The cache named by ``--cache`` (or TORCHKILN_CACHE, or the user cache); local tier if tiered."""
    from torchkiln.store import open_store
    from torchkiln.store.tiered import TieredStore

    store = open_store(url)
    return store.local if isinstance(store, TieredStore) else store


def _shared(url: str) -> Store:
    """The store at ``url`` itself: a bare RemoteStore for object-storage URLs (no local copy on the way)."""
    from torchkiln.store import open_store
    from torchkiln.store.remote import RemoteStore

    scheme, sep, _ = url.partition("://")
    if sep and len(scheme) > 1 and scheme.lower() not in ("file", "memory"):
        return RemoteStore(url)
    return open_store(url)


def _push(args: argparse.Namespace) -> int:
    if not _selection_ok(args, "push"):
        return EXIT_USAGE
    return _transfer(args, "push", _local_tier(args.cache), _shared(args.to))


def _pull(args: argparse.Namespace) -> int:
    if not _selection_ok(args, "pull"):
        return EXIT_USAGE
    return _transfer(args, "pull", _shared(args.source), _local_tier(args.cache))


def _selection_ok(args: argparse.Namespace, command: str) -> bool:
    if bool(args.key) == bool(args.all):
        sys.stderr.write(f"torchkiln {command}: error: give exactly one of KEY or --all\n")
        return False
    return True


def _check(data: bytes, where: str) -> str | None:
    """``None`` if the artifact is intact (and trusted, when a signing key is set), else the reason."""
    from torchkiln.artifact import decode
    from torchkiln.settings import signing_key

    try:
        decode(data, signing_key=signing_key(), where=where)
    except TorchkilnError as exc:  # corrupt, unknown format version or untrusted: none of them travel
        return exc.what
    return None


def _transfer(args: argparse.Namespace, command: str, source: Store, dest: Store) -> int:
    keys = [args.key] if args.key else sorted(entry.key for entry in source.list())
    results: list[dict[str, Any]] = []
    for key in keys:
        data = source.get(key)
        record: dict[str, Any] = {"key": key, "bytes": len(data) if data is not None else 0}
        if data is None:
            record["status"] = MISSING
        elif (reason := _check(data, f"{source.url} key {key}")) is not None:
            record.update(status=INVALID, reason=reason)
        else:
            record["status"] = COPIED if dest.put(key, data) else EXISTS
        results.append(record)
    failed = [r for r in results if r["status"] in FAILED]
    if args.json:
        report = {"command": command, "from": source.url, "to": dest.url, "results": results}
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        for r in results:
            extra = f" ({r['reason']})" if "reason" in r else f" ({r['bytes']} bytes)" if r["bytes"] else ""
            sys.stdout.write(f"{r['status']:<8} {r['key']}{extra}\n")
        counts = {s: sum(r["status"] == s for r in results) for s in (COPIED, EXISTS, MISSING, INVALID)}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "nothing to do"
        sys.stdout.write(f"{command} {source.url} -> {dest.url}: {summary}\n")
    return EXIT_CHECK_FAILED if failed else EXIT_OK
