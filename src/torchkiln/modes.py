"""torch.compile's ``mode`` names, as torchkiln accepts them (no torch import: arguments are checked before any work).

What each mode turns on is torch's own table (``torch._inductor.list_mode_options``), applied by compiler.py the
way ``torch.compile`` applies it; the mode's name is part of the cache key (``options.mode``). ``None`` and
``"default"`` are one mode, as in torch.
"""

from __future__ import annotations

__all__ = ["DEFAULT", "MODES", "normalize"]

DEFAULT = "default"

#: The modes torchkiln serves (torch 2.10-2.14 all know them). Others (torch 2.13's ``"lite"``) are refused by
#: ``torchkiln.compile`` and handed to torch by ``torchkiln.install()``.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def normalize(mode: str | None) -> str:
    """The mode's key name: ``None`` is ``"default"``. The caller has checked that ``mode`` is one of ``MODES``."""
    return DEFAULT if mode is None else mode
