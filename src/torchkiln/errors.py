"""The TorchkilnError hierarchy: every error torchkiln raises on purpose.

Each subclass also inherits the builtin it is closest to, so ``except ValueError`` style code keeps working.
Fields are attributes, ``__str__`` says what failed, where, and how to fix it, and every error pickles
(``__reduce__`` rebuilds it from its fields), so errors cross process pools intact (filelock's style).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = [
    "TorchkilnError",
    "ArtifactCorruptError",
    "IncompatibleArtifactError",
    "UntrustedArtifactError",
    "StaleArtifactError",
    "StoreError",
    "UnsupportedTorchError",
    "UnknownFixError",
    "InvalidTargetError",
    "CompileError",
    "ArtifactEncodeError",
    "ConfigError",
    "InvalidArgumentError",
    "TorchkilnWarning",
    "RemoteCacheWarning",
    "warn",
]


class TorchkilnError(Exception):
    """Base class. ``what``: what failed; ``where``: the object, file or key; ``fix``: what to do."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.where = where
        self.fix = fix

    def _fields(self) -> dict[str, Any]:
        return {"where": self.where, "fix": self.fix}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.what, self._fields()))

    def __str__(self) -> str:
        text = self.what
        if self.where:
            text += f" [{self.where}]"
        if self.fix:
            text += f"\n  How to fix: {self.fix}"
        return text


def _rebuild(cls: type[TorchkilnError], what: str, fields: dict[str, Any]) -> TorchkilnError:
    return cls(what, **fields)


class ArtifactCorruptError(TorchkilnError, ValueError):
    """An artifact's bytes failed a structural, length or hash check; nothing was unpickled."""


class IncompatibleArtifactError(TorchkilnError, RuntimeError):
    """An intact artifact was built for another torch, Python, device or format version."""


class UntrustedArtifactError(TorchkilnError, PermissionError):
    """A signing key is configured and the artifact is unsigned or signed with another key."""


class StaleArtifactError(TorchkilnError, RuntimeError):
    """A source file that Dynamo inlined changed since the artifact was built."""


class StoreError(TorchkilnError, OSError):
    """A cache store could not be read or written (permissions, network, disk full)."""


class UnsupportedTorchError(TorchkilnError, RuntimeError):
    """The running torch is older than the first release torchkiln supports."""


class UnknownFixError(TorchkilnError, KeyError):
    """A forward-fix id that the registry does not know."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep the readable form
        return TorchkilnError.__str__(self)


class InvalidTargetError(TorchkilnError, TypeError):
    """``torchkiln.compile`` was given something that is neither a function nor an ``nn.Module``."""


class CompileError(TorchkilnError, RuntimeError):
    """torch could not compile or serialize the target; the message carries torch's reason and a hint."""


class ArtifactEncodeError(TorchkilnError, ValueError):
    """``encode`` was given a header or sections that the format cannot hold; nothing was written."""


class ConfigError(TorchkilnError, ValueError):
    """A setting (a ``TORCHKILN_*`` variable, a compile argument, a CLI option) is invalid; nothing was done.

    The CLI exits 2 (usage error) on it.
    """


class InvalidArgumentError(ConfigError, TypeError):
    """An argument of ``torchkiln.compile`` has a type it cannot use (checked before any work)."""


class TorchkilnWarning(UserWarning):
    """A fallback happened (a cache miss for a reason, an unwritable cache); the model still runs compiled."""


class RemoteCacheWarning(TorchkilnWarning, RuntimeWarning):
    """The remote tier of a tiered cache failed (timeout, network, permissions); the local tier carries on alone."""


_PACKAGE_DIR = str(Path(__file__).parent) + os.sep  # co_filename is not resolved either
#: Frames between the user's call and torchkiln that a warning must not point at: nn.Module.__call__ dispatch.
_DISPATCH_FILES = (str(Path("torch", "nn", "modules", "module.py")),)


def warn(message: str, category: type[Warning] = TorchkilnWarning) -> None:
    """``warnings.warn`` attributed to the user's line: the first frame outside torchkiln (and torch's
    ``nn.Module`` call dispatch), not a line inside torchkiln (``api.py:167``) that the user cannot act on.

    Python 3.12's ``skip_file_prefixes`` does this; 3.11 needs the walk.
    """
    level = 1
    frame = sys._getframe(0)  # noqa: SLF001 - this function: stacklevel 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE_DIR) or frame.f_code.co_filename.endswith(_DISPATCH_FILES)
    ):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    warnings.warn(message, category, stacklevel=level)


class LeaseTimeoutError(StoreError, TimeoutError):
    """Another live claim held a key's compile lease for the whole wait: the remote works, it is just busy.

    A ``StoreError`` (the remote could not give us the lease) and a ``TimeoutError`` (only the wait ran out), so
    callers that can compile anyway (the tiered store) tell it apart from a failing remote. Fields: ``timeout``
    (seconds waited), ``holder`` (the owner the live claim names: host, pid, ranks) and ``ttl`` (seconds after
    which that claim expires unless its holder renews it).
    """

    def __init__(
        self,
        what: str,
        *,
        where: str | None = None,
        fix: str | None = None,
        timeout: float | None = None,
        holder: str | None = None,
        ttl: float | None = None,
    ) -> None:
        super().__init__(what, where=where, fix=fix)
        self.timeout = timeout
        self.holder = holder
        self.ttl = ttl

    def _fields(self) -> dict[str, Any]:
        return {**super()._fields(), "timeout": self.timeout, "holder": self.holder, "ttl": self.ttl}


# Appended with its class, so the export and the error stay one block.
__all__ += ["LeaseTimeoutError"]
