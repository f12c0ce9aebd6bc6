"""What the compiled entry's frame sees: the globals a load gives torch, and the locals a call binds.

Guard expressions name these (``G['__import_knobmod'].SCALE``, ``module._modules['a']``), so the compile-time self
check, the header check before unpickling (loader.py) and the per-call re-checks all build them here, one way.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import _entry

__all__ = ["DYNAMO_INSTALLED", "call_args", "frame_locals", "loader_globals", "portable_globals"]


def call_args(target: Any, is_module: bool, args: Sequence[Any]) -> tuple[Any, ...]:
    """The positional arguments the compiled function takes: the module first for nn.Module targets."""
    return (target, *args) if is_module else tuple(args)


def loader_globals(target: Any, is_module: bool) -> dict[str, Any]:
    """The ``f_globals`` ``load`` gives torch: torchkiln's entry module for modules, a function's own globals."""
    return vars(_entry) if is_module else dict(target.__globals__)


#: Names Dynamo installs into the compiling frame's globals (``__import_<mod>``, ``___module_<name>_<id>_c<N>``,
#: ``__builtins_dict___<N>``): present in this process's globals after a compile, absent in a fresh one.
DYNAMO_INSTALLED = ("__import_", "___", "__builtins_dict")


def portable_globals(target: Any, is_module: bool) -> dict[str, Any]:
    """The loader's globals without the names Dynamo installed in this process (what a fresh process has)."""
    return {k: v for k, v in loader_globals(target, is_module).items() if not k.startswith(DYNAMO_INSTALLED)}


def frame_locals(target: Any, is_module: bool, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The locals the compiled entry's frame starts with for a call (the names guard expressions use), bound the way
    torch's ``AOTCompiledFunction.prepare_f_locals`` binds them: closure cells, then the signature's arguments."""
    fn: Any = _entry.call_module if is_module else target
    f_locals: dict[str, Any] = {}
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        with contextlib.suppress(ValueError):  # an empty cell
            f_locals[name] = cell.cell_contents
    # follow_wrapped=False, as torch's convert_frame._get_signature: a functools.wraps wrapper's frame binds its own
    # parameters (``*args, **kwargs``), not the ones of the function it wraps.
    bound = inspect.signature(fn, follow_wrapped=False).bind(*call_args(target, is_module, args), **kwargs)
    bound.apply_defaults()
    f_locals.update(bound.arguments)
    return f_locals
