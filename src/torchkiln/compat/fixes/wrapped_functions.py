"""Fix ``wrapped-functions``: aot_compile cannot save a function hidden behind a ``functools.wraps`` wrapper.

Symptom (torch 2.11 and 2.13, checked here): compiling a module-level function decorated with a
``functools.wraps`` decorator (or any callable that reaches such a function) traces, but the save fails with
``_pickle.PicklingError: Can't pickle <function decorated_foo at 0x...>: it's not the same object as
module.decorated_foo`` (torchkiln: ``torch compiled KEY but it cannot be saved: PicklingError: ...``; it runs JIT,
and nothing is published).

Cause: ``torch._dynamo.aot_compile.AOTCompilePickler.reducer_override`` rebuilds a function from its code object
only when its ``__qualname__`` contains ``<locals>``; every other function is left to pickle, which saves it *by
reference* (``module.qualname``). ``functools.wraps`` copies the wrapped function's ``__module__`` and
``__qualname__`` onto the wrapper, and the decorator binds the wrapper to that name, so the original function that
the wrapper's closure cell holds (and the saved runtime environment carries) names an object that is not itself.

Fix: mirrors upstream's dispatch (pytorch#196685, "[aot_compile] Rebuild AOTCompilePickler on
FunctionPicklerBase", on main only): ``reducer_override`` is wrapped, and a plain function whose
``module.qualname`` does not resolve back to it is rebuilt *by value* from its code object, closure and defaults,
through torch's own ``AOTCompilePickler._unpickle_nested_function`` (so the bytes load in any process with this
torch, torchkiln or not), against the globals of the module whose dict it runs in; keyword defaults travel as
pickle state. Like upstream, the function's ``__dict__`` (``__wrapped__``, which the runtime never reads) is not
carried. A function whose globals are no importable module's dict is left to torch, which fails loudly as before.

Upstream: pytorch#196685 (merged into main after 2.13; no release installed here carries it).
Affected: torch >=2.10.dev0 (no upper bound until a release carries the fix; the probe retires it then).
Touches: ``torch._dynamo.aot_compile.AOTCompilePickler.reducer_override`` (wrapped; the original kept for
``revert``) and ``AOTCompilePickler._unpickle_nested_function`` (called at load).
"""

from __future__ import annotations

import functools
import inspect
import io
import pickle
import sys
import types
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix
from torchkiln.compat.references import saveable_by_reference

__all__ = ["FIX"]


def _pickler_class() -> Any:
    try:
        from torch._dynamo.aot_compile import AOTCompilePickler
    except ImportError:
        return None
    if "reducer_override" not in vars(AOTCompilePickler) or not hasattr(AOTCompilePickler, "_unpickle_nested_function"):
        return None
    return AOTCompilePickler


def _globals_module(fn: types.FunctionType) -> str | None:
    """The name of the imported module whose dict ``fn`` runs in (not ``fn.__module__``: wraps copies that)."""
    name = fn.__globals__.get("__name__")
    module = sys.modules.get(name) if isinstance(name, str) else None
    return name if module is not None and vars(module) is fn.__globals__ else None


def _reduce_by_value(pickler: Any, fn: types.FunctionType) -> Any:
    module = _globals_module(fn)
    if module is None:
        return NotImplemented
    args = (fn.__code__, module, fn.__qualname__, fn.__defaults__, fn.__closure__)
    # BUILD with a (dict state, slot state) pair setattr()s the slot state: how __kwdefaults__ comes back.
    state = (None, {"__kwdefaults__": fn.__kwdefaults__}) if fn.__kwdefaults__ else None
    return (type(pickler)._unpickle_nested_function, args, state)


def _needs_value(obj: Any) -> bool:
    # torch's own reducer already rebuilds <locals> functions; everything else pickles by reference unless its
    # name resolves to another object (a functools.wraps wrapper took it).
    return inspect.isfunction(obj) and "<locals>" not in obj.__qualname__ and not saveable_by_reference(obj)


def _probe_base(x: Any) -> Any:
    return x


def _wrap(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(x: Any) -> Any:
        return fn(x)

    return wrapper


# The shape of the bug: the module-level name now holds the wrapper; the original lives in its closure.
_probe_base = _wrap(_probe_base)


def _probe() -> bool:
    """Pickle, with torch's AOTCompilePickler, the original function behind a functools.wraps wrapper."""
    pickler_class = _pickler_class()
    if pickler_class is None:
        return False
    closure = _probe_base.__closure__
    if not closure:
        return False
    hidden = closure[0].cell_contents
    try:
        pickler_class({}, io.BytesIO()).dump(hidden)
    except pickle.PicklingError as exc:
        return "not the same object" in str(exc)
    return False


_patch = ClassPatch(_pickler_class, "reducer_override")


def _apply() -> None:
    def replace(original: Any) -> Any:
        @functools.wraps(original)
        def reducer_override(self: Any, obj: Any) -> Any:
            if _needs_value(obj):
                reduced = _reduce_by_value(self, obj)
                if reduced is not NotImplemented:
                    return reduced
            return original(self, obj)

        return reducer_override

    _patch.apply(replace)


# After the runtime-environment fixes (10-30) and guard-state-singletons (40), which patch other functions: it
# changes only how AOTCompilePickler saves functions, so its place changes no result.
FIX = Fix(
    id="wrapped-functions",
    title="aot_compile saves a function hidden behind a functools.wraps wrapper",
    upstream="pytorch#196685 (main only)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=(
        "torch._dynamo.aot_compile.AOTCompilePickler.reducer_override",
        "torch._dynamo.aot_compile.AOTCompilePickler._unpickle_nested_function",
    ),
    targets_exist=lambda: _pickler_class() is not None,
    probe=_probe,
    apply=_apply,
    revert=_patch.revert,
    is_applied=_patch.is_applied,
    order=60,
)
