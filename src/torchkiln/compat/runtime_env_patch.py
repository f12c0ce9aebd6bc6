"""The one patch point shared by the fixes that repair what aot_compile saves.

Two fixes (``builtins-runtime-env``, ``module-globals``) complete the runtime environment that
``torch._dynamo.convert_frame.GraphCaptureOutput.get_runtime_env`` returns. Stacking two independent wrappers on
one method would make ``revert`` order-dependent, so this module wraps the method once and runs an ordered table
of named post-processors; a fix adds or removes its entry, and the wrapper goes away with the last entry.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["add", "has", "remove", "target_class"]

#: (self: GraphCaptureOutput, env: GraphRuntimeEnv) -> None; mutates env.used_globals in place
PostProcessor = Callable[[Any, Any], None]

_processors: dict[str, PostProcessor] = {}
_lock = threading.Lock()
_ORIGINAL_ATTR = "__torchkiln_original__"


def target_class() -> Any:
    """``GraphCaptureOutput`` when the running torch has it with ``get_runtime_env``, else ``None``."""
    try:
        from torch._dynamo import convert_frame
    except ImportError:
        return None
    cls = getattr(convert_frame, "GraphCaptureOutput", None)
    if cls is None or not callable(getattr(cls, "get_runtime_env", None)):
        return None
    return cls


def _install(cls: Any) -> None:
    original = cls.get_runtime_env
    if hasattr(original, _ORIGINAL_ATTR):
        return

    @functools.wraps(original)
    def get_runtime_env(self: Any) -> Any:
        env = original(self)
        for processor in list(_processors.values()):
            processor(self, env)
        return env

    setattr(get_runtime_env, _ORIGINAL_ATTR, original)
    cls.get_runtime_env = get_runtime_env


def _uninstall(cls: Any) -> None:
    original = getattr(cls.get_runtime_env, _ORIGINAL_ATTR, None)
    if original is not None:
        cls.get_runtime_env = original


def add(name: str, processor: PostProcessor) -> None:
    cls = target_class()
    if cls is None:
        raise RuntimeError("torch has no GraphCaptureOutput.get_runtime_env to patch")
    with _lock:
        _processors[name] = processor
        _install(cls)


def remove(name: str) -> None:
    with _lock:
        _processors.pop(name, None)
        if not _processors and (cls := target_class()) is not None:
            _uninstall(cls)


def has(name: str) -> bool:
    cls = target_class()
    return cls is not None and name in _processors and hasattr(cls.get_runtime_env, _ORIGINAL_ATTR)
