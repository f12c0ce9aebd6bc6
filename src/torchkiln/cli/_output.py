"""How the cache commands print: rich tables for a person, one JSON document on stdout for ``--json``."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from rich.console import Console

__all__ = ["console", "emit_json", "human_size", "iso"]


def console() -> Console:
    # Piped output keeps whole keys on one line (for grep and xargs); a terminal gets its own width.
    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")


def human_size(size: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while size >= 1024 and power < len(units) - 1:
        size, power = size / 1024, power + 1
    return f"{size:.0f} B" if power == 0 else f"{size:.1f} {units[power]}"
