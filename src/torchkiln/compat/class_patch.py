"""The patch-one-class-attribute pattern the forward fixes share: replace it once, restore torch's own object.

A fix that replaces one attribute of one torch class (a method, a classmethod, a string) needs the same four
things: find the class (None where this torch lacks it), replace the attribute at most once, put back the very
object torch defined (the one in the class ``__dict__``, so a classmethod stays a classmethod), and say whether it
is applied. :class:`ClassPatch` owns them; a fix supplies only the replacement, built from torch's original.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ClassPatch"]


class ClassPatch:
    """One attribute ``name`` of the class ``owner()`` returns (None: this torch has no such class)."""

    def __init__(self, owner: Callable[[], Any], name: str) -> None:
        self._owner = owner
        self._name = name
        self._original: Any = None
        self._applied = False

    def apply(self, replacement: Callable[[Any], Any]) -> None:
        """Set the attribute to ``replacement(original)``, ``original`` being the class ``__dict__``'s entry;
        nothing when already applied or when the class is absent."""
        owner = self._owner()
        if self._applied or owner is None:
            return
        original = vars(owner)[self._name]
        setattr(owner, self._name, replacement(original))
        self._original, self._applied = original, True

    def revert(self) -> None:
        """Put back the object torch defined; nothing when not applied."""
        owner = self._owner()
        if not self._applied or owner is None:
            return
        setattr(owner, self._name, self._original)
        self._original, self._applied = None, False

    def is_applied(self) -> bool:
        return self._applied
