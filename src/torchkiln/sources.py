"""The source ranges Dynamo inlined: recorded at compile, compared on load (a changed one is another variant).

Cheap by design (the hit path runs it): file reads and sha256 only, no Dynamo import. Ranges from torch and
torchkiln are not checked: the fingerprint pins their exact build.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkiln import digests

__all__ = ["describe_inlined_sources", "inlined_sources_changed"]

#: Inlined sources from these packages are not checked: the fingerprint pins their exact build already.
_PINNED_PACKAGES = ("torch", "torchkiln")


def _module_file(module_name: str) -> str | None:
    """The source file of a module, cheaply: ``sys.modules`` first, because ``find_spec`` imports the parents
    (checking ``torch._dynamo.polyfills`` that way would import all of Dynamo on the hit path)."""
    module = sys.modules.get(module_name)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(module_name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec else None
    return origin if origin and Path(origin).is_file() else None


def _source_lines_digest(module_name: str, first: int, last: int) -> tuple[str | None, str | None]:
    """(file path, sha256 of lines first..last-1) of a module's source on disk; (None, None) if it has none."""
    origin = _module_file(module_name)
    if origin is None:
        return None, None
    return origin, digests.lines_digest(origin, first, last)


def describe_inlined_sources(source_info: Any) -> list[dict[str, Any]]:
    records = []
    for item in sorted(source_info.inlined_sources, key=lambda s: (s.module, s.firstlineno)):
        path, digest = _source_lines_digest(item.module, item.firstlineno, item.lastlineno)
        records.append(
            {
                "module": item.module,
                "first_line": item.firstlineno,
                "last_line": item.lastlineno,
                "path": path,
                "sha256": digest,
            }
        )
    return records


def inlined_sources_changed(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The inlined source ranges whose text on disk differs from when the artifact was built (cheap: file reads)."""
    changed = []
    for record in records:
        if record.get("sha256") is None or str(record["module"]).split(".")[0] in _PINNED_PACKAGES:
            continue  # no file to compare (e.g. __main__ from stdin), or a torch file the fingerprint pins
        _, digest = _source_lines_digest(record["module"], record["first_line"], record["last_line"])
        if digest != record["sha256"]:
            changed.append(f"{record['module']} lines {record['first_line']}-{record['last_line']}")
    return changed
