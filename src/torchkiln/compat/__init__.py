"""Forward fixes for known upstream serialization bugs in torch's aot_compile (see registry.py)."""

from __future__ import annotations

from torchkiln.compat.registry import (
    Fix,
    FixState,
    FixStatus,
    applied_ids,
    apply_fixes,
    compile_scope,
    fixes,
    get_fix,
    status,
)
from torchkiln.compat.versions import check_supported, torch_version

__all__ = [
    "Fix",
    "FixState",
    "FixStatus",
    "apply_fixes",
    "applied_ids",
    "check_supported",
    "compile_scope",
    "fixes",
    "get_fix",
    "status",
    "torch_version",
]
