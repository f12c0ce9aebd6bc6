"""A loaded artifact of a nested function runs on the caller's closure cells, never on the ones torch pickled.

One rule, owned here: compiler.load hands every loaded function target to :func:`bind_to_callers_closure`. It reads
torch's loaded function's ``_artifacts.runtime_env`` (allowed in tools/check_forbidden_imports.py); a torch that
keeps it elsewhere makes a closure a miss (``IncompatibleArtifactError``), never a guess. docs/PEER.md has the
cases that prove it (another closure value is a guard miss, another tensor is computed on live).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from torchkiln.errors import IncompatibleArtifactError

__all__ = ["bind_to_callers_closure"]


def bind_to_callers_closure(function: Any, fn: Any) -> None:
    """Make a loaded artifact read the caller's closure cells, not the copies torch pickled at compile.

    torch's loaded function runs with, and checks its guards against, ``runtime_env.closure``: the cells as they
    were in the compiling process (``AOTCompiledFunction.prepare_f_locals``, ``GraphRuntimeEnv.forward_callable``).
    A nested function of the same code but another closure (``make(2)`` compiled, ``make(3)`` loaded) would pass
    every guard and compute with the old values. On the caller's cells, Dynamo's guards on closure values are
    checked against what the caller holds now, as in the process that compiled: a different value is a guard miss
    (a new specialization), never a wrong result.
    """
    cells = fn.__closure__
    artifacts: Any = getattr(function, "_artifacts", None)
    env = getattr(artifacts, "runtime_env", None)
    if env is None:
        if not cells:
            return  # nothing to rebind: a plain function runs on its globals, which the loader re-checks
        # a torch whose loaded function keeps its environment elsewhere: the closure cannot be proven, so a miss
        raise IncompatibleArtifactError(
            f"cannot bind {fn.__qualname__}'s closure to this torch's loaded function",
            where=fn.__qualname__,
            fix="nothing to do: torchkiln compiles it again",
        )
    if not env.closure and not cells:
        return
    if cells is None or env.bytecode.co_freevars != fn.__code__.co_freevars:
        raise IncompatibleArtifactError(
            f"the artifact's closure {env.bytecode.co_freevars} is not {fn.__qualname__}'s {fn.__code__.co_freevars}",
            where=fn.__qualname__,
            fix="nothing to do: torchkiln compiles it again",
        )
    artifacts.runtime_env = dataclasses.replace(env, closure=cells)
    old = function.fn
    function.fn = types.FunctionType(old.__code__, old.__globals__, old.__name__, old.__defaults__, cells)
    function.fn.__kwdefaults__ = old.__kwdefaults__
