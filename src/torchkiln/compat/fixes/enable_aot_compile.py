"""Fix ``enable-aot-compile``: ``torch.compile(...)`` has no ``.aot_compile`` unless a config flag was set first.

Symptom (torch 2.10, 2.11): ``torch.compile(fn, fullgraph=True).aot_compile(...)`` raises
``AttributeError: 'function' object has no attribute 'aot_compile'``: ``torch._dynamo.eval_frame`` attaches
``aot_compile`` to the wrapper only if ``torch._dynamo.config.enable_aot_compile`` is true *when torch.compile() is
called*, and it defaults to False there (True from 2.12 on).

Fix: scoped, never global: applying it makes ``compat.compile_scope()`` patch the flag to True (through
``torch._dynamo.config.patch``) around torchkiln's own ``torch.compile`` call only; the user's process keeps
torch's default for every other compile.

Upstream: the default flipped to True in torch 2.12 (``torch/_dynamo/config.py``).
Affected: torch >=2.10.dev0,<2.12.dev0. Touches: ``torch._dynamo.config.enable_aot_compile``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.fix import Fix

__all__ = ["FIX"]

_active = False


def _config() -> Any:
    import torch._dynamo.config

    return torch._dynamo.config


def _targets_exist() -> bool:
    try:
        return hasattr(_config(), "enable_aot_compile")
    except ImportError:
        return False


def _probe_function(x: Any) -> Any:
    return x + 1


def _probe() -> bool:
    import torch

    # torch.compile() only wraps; nothing is traced until the wrapper is called, so this costs microseconds.
    return not hasattr(torch.compile(_probe_function, fullgraph=True), "aot_compile")


def _apply() -> None:
    global _active
    _active = True


def _revert() -> None:
    global _active
    _active = False


@contextlib.contextmanager
def _scope() -> Iterator[None]:
    with _config().patch(enable_aot_compile=True):
        yield


# First: without it torch 2.10/2.11 have no aot_compile at all, so doctor lists it before the fixes that repair
# what aot_compile saves.
FIX = Fix(
    id="enable-aot-compile",
    title="torch.compile(...).aot_compile exists for torchkiln's compile",
    upstream="torch 2.12 made torch._dynamo.config.enable_aot_compile default to True",
    affected=SpecifierSet(">=2.10.dev0,<2.12.dev0"),
    fixed_in="2.12",
    touches=("torch._dynamo.config.enable_aot_compile",),
    targets_exist=_targets_exist,
    probe=_probe,
    apply=_apply,
    revert=_revert,
    is_applied=lambda: _active,
    scope=_scope,
    order=10,
)
