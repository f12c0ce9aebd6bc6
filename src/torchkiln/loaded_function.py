"""``LoadedFunction``: a compiled or deserialized artifact as torchkiln calls it, with its guard check.

An input fits only when torch's kept guards and torchkiln's re-checks (guard_fates.py) both hold. A loaded copy's
first call skips AOTAutograd's custom-op aliasing debug check, which ran where the graph was compiled (the torch
internals of that live in inductor_cache/scopes.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import guard_fates, inductor_cache

__all__ = ["LoadedFunction"]


@dataclasses.dataclass
class LoadedFunction:
    """A compiled or deserialized artifact: call it like the compiled function (module first for module targets).

    ``guard_check`` is torch's own (kept) guards plus torchkiln's re-checks of the guards torch could not keep
    (guard_fates.py): an input fits only when both hold.
    """

    function: Any
    #: True for an artifact read from the cache, False for one compiled in this process
    loaded: bool = False
    #: a plain torch.compile wrapper: it guards and recompiles by itself, so every input "fits"
    jit: bool = False
    rechecker: guard_fates.Rechecker = dataclasses.field(default_factory=lambda: guard_fates.Rechecker(()))

    def __post_init__(self) -> None:
        # CompiledModule checks guards itself to pick a specialization; torch would check them a second time.
        disable = getattr(self.function, "disable_guard_check", None)
        if disable is not None and not self.jit:
            disable()
        self._first_call = self.loaded

    def guard_check(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        if self.jit:
            return True
        if not self.function.guard_check(*args, **kwargs):
            return False
        if not self.rechecker.records:
            return True
        return self.rechecker.check_call(self.function.fn.__globals__, self.function.prepare_f_locals(*args, **kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._first_call:
            self._first_call = False
            # The compiling process ran this graph with AOTAutograd's custom-op aliasing check on (~1 s of a ~5 s
            # CPU hit): a loaded copy skips it for its first call only.
            with inductor_cache.without_custom_op_aliasing_check():
                return self.function(*args, **kwargs)
        return self.function(*args, **kwargs)
