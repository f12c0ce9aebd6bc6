"""The ``torchkiln`` command line: argument parsing, output (rich tables or ``--json``) and exit codes.

Each command group lives in its own module (``cli/<group>.py``) with a ``register(subparsers)`` function that adds
its sub-commands; a sub-command's handler takes the parsed ``argparse.Namespace`` and returns the exit code:
0 ok, 1 a check failed (verify found corruption, doctor found a needed fix unavailable), 2 usage error.
Splitting by group keeps each file small and lets owners of a capability (fleet, bench) add commands without
touching the others.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from torchkiln import progress, settings
from torchkiln._version import __version__
from torchkiln.errors import ConfigError, TorchkilnError

__all__ = ["EXIT_CHECK_FAILED", "EXIT_OK", "EXIT_USAGE", "build_parser", "main"]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2

#: Command-group modules, imported lazily by name so a missing optional dependency breaks only its group.
COMMAND_GROUPS = (
    "torchkiln.cli.doctor",
    "torchkiln.cli.cache",
    "torchkiln.cli.listing",
    "torchkiln.cli.fleet",
    "torchkiln.cli.bench",
    "torchkiln.launch",  # `torchkiln run`
)


def add_cache_option(parser: argparse.ArgumentParser) -> None:
    """``--cache URL``: every command that reads or lists takes it (else TORCHKILN_CACHE, else the user cache)."""
    parser.add_argument(
        "--cache",
        metavar="URL",
        default=None,
        help=f"cache path or URL (default: ${settings.ENV_CACHE}, else the user cache directory)",
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchkiln",
        description="Compile a PyTorch model once; load the verified artifact anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"torchkiln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # A group whose optional dependency is missing (or that is broken) must not take the others down.
            print(f"torchkiln: commands of {module_name} unavailable: {exc}", file=sys.stderr)
            continue
        module.register(sub)
    return parser


def _report(args: argparse.Namespace, exc: TorchkilnError, code: int) -> int:
    """An error: its text on stderr; with ``--json`` also one JSON object on stdout (``ok``, ``error``), the shape
    every command's JSON failure has, so a script never parses an empty stdout."""
    print(f"torchkiln {args.command}: error: {exc}", file=sys.stderr)
    if getattr(args, "json", False):
        error = {"type": type(exc).__name__, "what": exc.what, "where": exc.where, "fix": exc.fix}
        sys.stdout.write(json.dumps({"ok": False, "command": args.command, "exit_code": code, "error": error}) + "\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        config = settings.current()
    except ConfigError as exc:
        if args.command != "doctor":  # doctor is where a user looks for what is wrong: it reports it itself
            return _report(args, exc, EXIT_USAGE)
    else:
        settings.configure_logging(config.log_level)
    if not getattr(args, "quiet", False):
        progress.show_on()  # stderr only: --json output on stdout stays pure
    try:
        return int(handler(args))
    except ConfigError as exc:  # a setting or an option: a usage error, not a failed check
        return _report(args, exc, EXIT_USAGE)
    except TorchkilnError as exc:
        return _report(args, exc, EXIT_CHECK_FAILED)
    except KeyboardInterrupt:
        return 130
    finally:
        progress.hide()
