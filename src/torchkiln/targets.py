"""What torchkiln can compile, and the names it gives it: the one target-validity rule, ``unwrap`` and ``qualname``.

A target is an ``nn.Module``, or a Python function a fresh process can import again by name: a module-level
``def`` (or a bound method of one, whose owner is the ``self`` argument). Lambdas, nested functions and
``functools.partial`` objects are refused: nothing in another process can rebuild them, so an artifact of one could
never be loaded (the key, the compile and ``torchkiln explain`` all apply this one rule).
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
        if "<locals>" in fn.__qualname__ or fn.__name__ == "<lambda>":
            raise InvalidTargetError(
                f"cannot compile {fn.__qualname__}: a lambda or nested function cannot be reloaded in another process",
                where=qualname(fn),
                fix="define the function at module level (or wrap the computation in an nn.Module)",
            )
        return False
    raise InvalidTargetError(
        f"torchkiln.compile needs an nn.Module or a module-level function, got {qualname(type(target))}",
        where=repr(target)[:80],
        fix="pass the model (an nn.Module) or a module-level function; wrap a functools.partial or a callable "
        "object in a def at module level",
    )
