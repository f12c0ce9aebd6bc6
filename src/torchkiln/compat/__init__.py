"""Forward fixes for known upstream serialization bugs in torch's aot_compile.

The records are in fix.py, the discovered table and its states in registry.py, one bug per file in fixes/.
"""

from __future__ import annotations

# Import the ``fixes`` subpackage before binding the function ``fixes`` below: the first import of a submodule
# sets it as an attribute of this package, so a later first import (registry.discover does one) would replace
# ``compat.fixes()`` with the subpackage and every call after the first would fail with "'module' object is not
# callable". Once loaded, re-imports do not rebind it. The subpackage's __init__ is a docstring: this is free.
import torchkiln.compat.fixes as _fixes_package  # noqa: F401
from torchkiln.compat.fix import Fix, FixState, FixStatus
from torchkiln.compat.registry import (
    applied_ids,
    apply_fixes,
    apply_load_fixes,
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
    "apply_load_fixes",
    "applied_ids",
    "check_supported",
    "compile_scope",
    "fixes",
    "get_fix",
    "status",
    "torch_version",
]
