"""Fix ``import-source-reload``: a saved guard state that names an imported module cannot be loaded.

Symptom (torch 2.11 and 2.13, checked here): a compile whose guards reach a module through Dynamo's
``ImportSource`` (``__import__('torch...')``: a ``dynamic=True`` model calling ``torch.cond``, a
``torch.func.vmap(torch.func.grad(...))`` target) saves, but every load, in any process, fails with
``RuntimeError: TracingContext.get() must be called within an ongoing trace.`` (torchkiln: ``torch compiled KEY
but cannot load what it saved: RuntimeError: ...``; the artifact is never published).

Cause: ``torch._guards.dataclass_with_cached_hash`` gives every ``Source`` a ``__reduce__`` that rebuilds it by
calling the class (``(cls, field_values)``), so unpickling the guard state (``torch._dynamo.package
.load_guards_state``) runs ``ImportSource.__post_init__``, which installs an ``ID_MATCH`` guard into the current
``TracingContext``'s guards context: ``install_guard`` -> ``TracingContext.get()``, and a load is no trace.

Fix (``repairs_load``: torchkiln applies it on the load path too, ``compat.apply_load_fixes``; its probe
pickles one ``ImportSource``, no compile): ``ImportSource.__post_init__`` is wrapped: with no ``TracingContext``
active (``TracingContext.try_get()`` is None), it does nothing; inside a trace it runs torch's original
unchanged. Nothing is lost at load: the guard it would install belongs to a trace that is over, its ``ID_MATCH``
was installed when the graph was traced, and serialized guards are rebuilt from the saved guard state
(``ID_MATCH`` is one of the types torch's serializer drops; torchkiln re-checks the dropped ones, DESIGN.md
section 10).

Upstream: not fixed in a release installed here (torch 2.13's ``ImportSource.__post_init__`` is unchanged);
the aot_compile serialization tracking issue is pytorch#160207.
Affected: torch >=2.10.dev0 (no upper bound until upstream fixes it; the probe retires the fix then).
Touches: ``torch._dynamo.source.ImportSource.__post_init__`` (wrapped; the original kept for ``revert``), read:
``torch._guards.TracingContext.try_get``.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix

__all__ = ["FIX"]


def _source_class() -> Any:
    try:
        from torch._dynamo.source import ImportSource
        from torch._guards import TracingContext
    except ImportError:
        return None
    if not hasattr(TracingContext, "try_get") or "__post_init__" not in vars(ImportSource):
        return None
    return ImportSource


def _probe() -> bool:
    """Round-trip an ImportSource through pickle outside any trace, the way a load unpickles a guard state."""
    source = _source_class()
    if source is None:
        return False
    # Built without its constructor, which outside a trace already fails the same way; a load only unpickles.
    saved = object.__new__(source)
    object.__setattr__(saved, "module_name", "math")
    data = pickle.dumps(saved)
    try:
        pickle.loads(data)
    except RuntimeError as exc:
        return "TracingContext" in str(exc)
    return False


_patch = ClassPatch(_source_class, "__post_init__")


def _apply() -> None:
    from torch._guards import TracingContext

    def replace(original: Any) -> Any:
        @functools.wraps(original)
        def post_init(self: Any) -> None:
            if TracingContext.try_get() is None:
                return  # unpickled outside a trace (a load): there is no guards context to install into
            original(self)

        return post_init

    _patch.apply(replace)


# After the runtime-environment fixes (10-30) and guard-state-singletons (40): it repairs the load of the guard
# state, independent of what the others change in what is saved, so any place after them gives the same result.
FIX = Fix(
    id="import-source-reload",
    title="a guard state naming an ImportSource loads outside a trace",
    upstream="not fixed upstream (see pytorch#160207)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=("torch._dynamo.source.ImportSource.__post_init__", "torch._guards.TracingContext.try_get"),
    targets_exist=lambda: _source_class() is not None,
    probe=_probe,
    apply=_apply,
    revert=_patch.revert,
    is_applied=_patch.is_applied,
    order=50,
    repairs_load=True,  # the failure is in a process that only loads
)
