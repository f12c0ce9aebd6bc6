"""Fix ``builtins-runtime-env``: aot_compile forgets builtins when it saves a compiled function.

Symptom (torch 2.10, 2.11): code that lets a builtin escape the graph (``return x + 1, type``) saves, but a load in
a fresh process fails with ``RuntimeError: Missing required external references: ['__builtins_dict___0']. Please
load AOT compiled function with f_globals=<enclosing global scope>`` (with or without ``f_globals``); a module whose
forward rebuilds a transformers ``ModelOutput`` (a bare ``LOAD_GLOBAL type``) fails already inside
``aot_compile()`` with ``Missing required external references: ['type']``.

Upstream: pytorch#177558, shipped in torch 2.12: at the end of
``torch._dynamo.convert_frame.GraphCaptureOutput.get_runtime_env`` every name in ``runtime_env.external_refs``
missing from ``runtime_env.used_globals`` is filled in: a ``__builtins_dict__*`` name present in ``self.f_globals``
gets a copy of that builtins dict keeping only the entries that pickle (``_safe_builtins_dict``); any other name
the ``builtins`` module has gets that builtin.

Affected: torch >=2.10.dev0,<2.12.dev0. Touches: ``GraphCaptureOutput.get_runtime_env`` (wrapped, the original is
called first and kept for ``revert``), ``GraphRuntimeEnv.used_globals``/``external_refs`` (read). On torch 2.9 the
class is ``CaptureOutput`` without ``get_runtime_env``: the fix then reports ``not-applicable`` and never raises.
"""

from __future__ import annotations

import builtins
import pickle  # allowed here (tools/check_forbidden_imports.py): picklability is tested by pickling, as upstream does
from collections.abc import Mapping
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat import runtime_env_patch
from torchkiln.compat.fix import Fix

__all__ = ["FIX", "fill_builtin_refs", "safe_builtins_dict"]

_BUILTINS_DICT_PREFIX = "__builtins_dict__"


def safe_builtins_dict(builtins_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``builtins_dict`` that pickle, in order; never raises (upstream's ``_safe_builtins_dict``)."""
    result: dict[str, Any] = {}
    for name, value in builtins_dict.items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - any failure to pickle means "not saveable"
            continue
        result[name] = value
    return result


def fill_builtin_refs(used_globals: dict[str, Any], external_refs: set[str], f_globals: Mapping[str, Any]) -> None:
    """Upstream's loop: give every builtin the bytecode loads a saved value."""
    for ref in external_refs:
        if ref in used_globals:
            continue
        if ref.startswith(_BUILTINS_DICT_PREFIX) and ref in f_globals:
            used_globals[ref] = safe_builtins_dict(f_globals[ref])
        elif hasattr(builtins, ref):
            used_globals[ref] = getattr(builtins, ref)


def _targets_exist() -> bool:
    return runtime_env_patch.target_class() is not None


def _probe_function(x: Any) -> Any:
    return x + 1, type


def _probe() -> bool:
    import torch

    from torchkiln.compat.probing import unsaved_runtime_refs

    missing = unsaved_runtime_refs(_probe_function, (torch.ones(2),))
    return any(ref.startswith(_BUILTINS_DICT_PREFIX) or hasattr(builtins, ref) for ref in missing)


def _post_process(capture_output: Any, env: Any) -> None:
    fill_builtin_refs(env.used_globals, env.external_refs, capture_output.f_globals)


FIX_ID = "builtins-runtime-env"

# Second: the first of the two post-processors on runtime_env_patch's shared get_runtime_env wrapper.
FIX = Fix(
    id=FIX_ID,
    title="aot_compile saves builtins the compiled bytecode loads",
    upstream="pytorch#177558",
    affected=SpecifierSet(">=2.10.dev0,<2.12.dev0"),
    fixed_in="2.12",
    touches=("torch._dynamo.convert_frame.GraphCaptureOutput.get_runtime_env",),
    targets_exist=_targets_exist,
    probe=_probe,
    apply=lambda: runtime_env_patch.add(FIX_ID, _post_process),
    revert=lambda: runtime_env_patch.remove(FIX_ID),
    is_applied=lambda: runtime_env_patch.has(FIX_ID),
    order=20,
)
