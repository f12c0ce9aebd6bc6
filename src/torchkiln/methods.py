"""A bound method of an ``nn.Module`` (``model.forward``, ``model.encode``) compiled as a module target.

``torchkiln.compile(model.forward)`` (and ``model.forward = torch.compile(model.forward, ...)`` under
``torchkiln.install()``) is the pattern transformers documents for ``generate()``. aot_compile pickles a bound-method
root by reference, and a decorated ``forward`` (transformers' ``@can_return_tuple``) is not the object its name
resolves to (``Can't pickle <function LlamaForCausalLM.forward>: it's not the same object``); once
``model.forward`` is reassigned, nothing would resolve to it at all. So torchkiln compiles ``MethodOf(owner,
function)`` through its module entry instead: the owner stays an argument read at call time (its weights are never
pickled), the function is the one the method was bound to (a guard torchkiln re-checks by name and bytecode), and
the owner's own hooks do not run, exactly as when the bound method itself is called.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

__all__ = ["MethodOf", "method_target"]


class MethodOf(torch.nn.Module):
    """``forward(*args, **kwargs)`` is ``function(owner, *args, **kwargs)``."""

    def __init__(self, owner: torch.nn.Module, function: Any) -> None:
        super().__init__()
        self.owner = owner
        self.function = function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(self.owner, *args, **kwargs)


def method_target(target: Any) -> MethodOf | None:
    """The ``MethodOf`` for a bound method of an ``nn.Module``; None for anything else."""
    if inspect.ismethod(target) and isinstance(target.__self__, torch.nn.Module):
        return MethodOf(target.__self__, target.__func__)
    return None
