"""torch's exceptions -> the reason a user can act on: the line that names the cause, and where in their code.

Dynamo wraps the real error: a wrong input shape reaches the caller as ``TorchRuntimeError: RuntimeError when
making fake tensor call``, while the cause (``a and b must have same reduction dim, but got [2, 5] X [16, 8]``) is
the innermost exception of the chain, and the place is in the message's ``from user code:`` block (issue 11: the
real reason was only in torch's log). Pure text and exception chains: no torch import.
"""

from __future__ import annotations

import re

__all__ = ["exception_reason", "user_location"]

#: Exception types that only carry Dynamo's wrapping, never the cause itself.
_WRAPPERS = frozenset(
    {"TorchRuntimeError", "Unsupported", "UserError", "BackendCompilerFailed", "InternalTorchDynamoError"}
)
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\s*$')
_MAX = 2000


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the ``__cause__``/``__context__`` chain (cycles cut).

    A suppressed context (``raise ... from None``) is followed too: Dynamo re-raises its wrapper that way, and the
    context is the error it wrapped.
    """
    seen = {id(exc)}
    while True:
        inner = exc.__cause__ or exc.__context__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def _outside_torch(filename: str) -> bool:
    path = filename.replace("\\", "/")
    return "/torch/" not in path and "/torchkiln/" not in path


def user_location(exc: BaseException) -> str | None:
    """``file:line in func``: the innermost frame of the user's code that Dynamo was tracing when it failed.

    Dynamo attaches the traced frames to its exceptions (``real_stack``, a ``traceback.StackSummary``; on every
    torch from 2.10); without one, the message's ``from user code:`` block is read.
    """
    chain, seen = [], set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        chain.append(node)
        node = node.__cause__ or node.__context__
    for item in chain:
        stack = getattr(item, "real_stack", None) or ()
        frames = [(f.filename, f.lineno, f.name) for f in stack if _outside_torch(f.filename)]
        if frames:
            file, line, func = frames[-1]
            return f"{file}:{line} in {func}"
    _, found, block = str(exc).partition("from user code:")
    matches = [m for m in (_FRAME.match(line) for line in block.splitlines()) if m] if found else []
    own = [m for m in matches if _outside_torch(m["file"])]
    if not own:
        return None
    return f"{own[-1]['file']}:{own[-1]['line']} in {own[-1]['func']}"


def exception_reason(exc: BaseException) -> str:
    """``Type: first line`` of the cause, never empty (torch raises some, Dynamo's restarts, bare).

    When Dynamo wrapped another exception, the cause is the innermost one: its type and first line come first,
    Dynamo's summary after it, then the user's frame (``at model.py:12 in forward``) when the message names one.
    """
    outer = f"{type(exc).__name__}: {_first_line(exc)}" if _first_line(exc) else type(exc).__name__
    root = _root_cause(exc)
    text = outer
    if root is not exc and type(root).__name__ not in _WRAPPERS and _first_line(root):
        text = f"{type(root).__name__}: {_first_line(root)} (torch: {outer})"
    where = user_location(exc)
    if where:
        text += f" at {where}"
    return text[:_MAX]
