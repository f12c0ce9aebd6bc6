"""What torchkiln can compile, and the names it gives it: the one target-validity rule, ``unwrap`` and ``qualname``.

A target is an ``nn.Module`` or a Python function (a module-level ``def``, a bound method of one, whose owner is
the ``self`` argument, or a nested function). ``functools.partial`` objects and other callables are refused: their
state is no function's code, closure or globals, so neither a key nor torch's guards can see it (the key, the
compile and ``torchkiln explain`` all apply this one rule).

A nested function (``<locals>`` in its qualname) is accepted because its artifact is sound across processes
(issue 14): the key carries its code digest (describe.py: two functions of one qualname with other code never
share a key), the loaded artifact runs on the *caller's* closure cells, not the copies torch saved
(compiler.load), so every guard Dynamo put on a closure value (``CONSTANT_MATCH`` on an int, ``TENSOR_MATCH`` plus
a graph input for a tensor, a re-check for a function) is checked against what the caller's function holds now.
Lambdas stay refused: a lambda has no name of its own (``<lambda>``), so nothing but its code tells two apart,
and the error message asks for a ``def``, which costs the user one line.
"""

from __future__ import annotations

import inspect
from typing import Any

from torchkiln.errors import InvalidTargetError

__all__ = ["qualname", "unwrap", "validate"]


def qualname(obj: Any) -> str:
    """``module.Qualified.name`` of a class or function (``?`` for a missing module)."""
    return f"{getattr(obj, '__module__', None) or '?'}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def unwrap(target: Any) -> Any:
    """The plain function behind a bound-method target (a function target is itself)."""
    return target.__func__ if inspect.ismethod(target) else target


def validate(target: object) -> bool:
    """True for an ``nn.Module``, False for a function target; ``InvalidTargetError`` for anything else."""
    import torch

    if isinstance(target, torch.nn.Module):
        return True
    fn = unwrap(target)
    if inspect.isfunction(fn):
        if fn.__name__ == "<lambda>":
            raise InvalidTargetError(
                f"cannot compile {fn.__qualname__}: a lambda has no name a cache key or a log can tell apart",
                where=qualname(fn),
                fix="define it with def (at module level or nested), or wrap the computation in an nn.Module",
            )
        return False
    raise InvalidTargetError(
        f"torchkiln.compile needs an nn.Module or a module-level function, got {qualname(type(target))}",
        where=repr(target)[:80],
        fix="pass the model (an nn.Module) or a module-level function; wrap a functools.partial or a callable "
        "object in a def at module level",
    )
