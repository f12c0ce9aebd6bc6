"""The one patch point shared by the fixes that change how Dynamo pickles a frame's guard state.

Two fixes (``guard-state-singletons``, ``self-pickling-local-modules``) change what
``torch._dynamo.guards.GuardsStatePickler.reducer_override`` returns for some objects. Stacking two independent
wrappers on one method would make ``revert`` order-dependent (reverting the inner one would drop the outer one), so
this module wraps the method once and runs an ordered chain of named hooks, as runtime_env_patch does for
``get_runtime_env``. A hook is called as ``hook(pickler, obj, call_next)``: it may adjust the pickler's state and
return ``call_next()`` (the rest of the chain, then torch's own reducer), or post-process what ``call_next()``
returned. A fix adds or removes its hook; the wrapper goes away with the last one.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Hook", "add", "has", "remove", "target_class"]

#: (pickler: GuardsStatePickler, obj, call_next: () -> reduction) -> reduction (or NotImplemented)
Hook = Callable[[Any, Any, Callable[[], Any]], Any]

_hooks: dict[str, Hook] = {}
_lock = threading.Lock()
_ORIGINAL_ATTR = "__torchkiln_original__"


def target_class() -> Any:
    """``GuardsStatePickler`` when the running torch prunes through ``missing_values``, else ``None``."""
    try:
        from torch._dynamo import guards
    except ImportError:
        return None
    cls = getattr(guards, "GuardsStatePickler", None)
    if cls is None or not callable(getattr(cls, "reducer_override", None)):
        return None
    try:
        parameters = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return None
    return cls if "missing_values" in parameters else None


def _chain(pickler: Any, obj: Any, original: Callable[[Any, Any], Any]) -> Any:
    hooks = list(_hooks.values())

    def run(index: int) -> Any:
        if index == len(hooks):
            return original(pickler, obj)
        return hooks[index](pickler, obj, lambda: run(index + 1))

    return run(0)


def _install(cls: Any) -> None:
    original = vars(cls)["reducer_override"]
    if hasattr(original, _ORIGINAL_ATTR):
        return

    @functools.wraps(original)
    def reducer_override(self: Any, obj: Any) -> Any:
        return _chain(self, obj, original)

    setattr(reducer_override, _ORIGINAL_ATTR, original)
    cls.reducer_override = reducer_override


def _uninstall(cls: Any) -> None:
    original = getattr(vars(cls).get("reducer_override"), _ORIGINAL_ATTR, None)
    if original is not None:
        cls.reducer_override = original


def add(name: str, hook: Hook) -> None:
    """Add (or replace) the hook ``name``; hooks run in the order they were first added."""
    cls = target_class()
    if cls is None:
        raise RuntimeError("torch has no GuardsStatePickler with missing_values to patch")
    with _lock:
        _hooks[name] = hook
        _install(cls)


def remove(name: str) -> None:
    with _lock:
        _hooks.pop(name, None)
        if not _hooks and (cls := target_class()) is not None:
            _uninstall(cls)


def has(name: str) -> bool:
    cls = target_class()
    return cls is not None and name in _hooks and hasattr(vars(cls).get("reducer_override"), _ORIGINAL_ATTR)
