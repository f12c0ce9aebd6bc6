"""torchkiln: compile a PyTorch model once, load the verified artifact anywhere, skipping Dynamo and Inductor.

Re-exports only. Importing torchkiln patches nothing: forward fixes are applied by ``apply_fixes()`` (which
``compile()`` calls for you).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torchkiln._version import __version__
from torchkiln.api import compile
from torchkiln.errors import (
    ArtifactCorruptError,
    ArtifactEncodeError,
    CompileError,
    ConfigError,
    IncompatibleArtifactError,
    InvalidTargetError,
    LeaseTimeoutError,
    RemoteCacheWarning,
    StaleArtifactError,
    StoreError,
    TorchkilnError,
    TorchkilnWarning,
    UnknownFixError,
    UnsupportedTorchError,
    UntrustedArtifactError,
)
from torchkiln.preloader import Preload, preload
from torchkiln.routing import install, installed, uninstall
from torchkiln.specialization import Specialization

if TYPE_CHECKING:
    from torchkiln.compat.fix import FixStatus
    from torchkiln.wrappers import CompiledFunction, CompiledModule


def __getattr__(name: str) -> Any:
    # CompiledModule subclasses nn.Module: torch is imported when it is first asked for, not by ``import torchkiln``.
    if name in ("CompiledModule", "CompiledFunction"):
        from torchkiln import wrappers

        return getattr(wrappers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fixes() -> list[FixStatus]:
    """The status of every forward fix on the running torch (probes run once per process)."""
    from torchkiln import compat

    return [compat.status(fix.id) for fix in compat.fixes()]


def apply_fixes(ids: list[str] | None = None) -> list[FixStatus]:
    """Apply the forward fixes the running torch needs (idempotent); returns their statuses."""
    from torchkiln import compat

    return compat.apply_fixes(ids)


__all__ = [
    "__version__",
    "compile",
    "CompiledModule",
    "CompiledFunction",
    "Specialization",
    "install",
    "uninstall",
    "installed",
    "preload",
    "Preload",
    "fixes",
    "apply_fixes",
    "TorchkilnWarning",
    "RemoteCacheWarning",
    "ConfigError",
    "ArtifactEncodeError",
    "ArtifactCorruptError",
    "CompileError",
    "IncompatibleArtifactError",
    "InvalidTargetError",
    "LeaseTimeoutError",
    "StaleArtifactError",
    "StoreError",
    "TorchkilnError",
    "UnknownFixError",
    "UnsupportedTorchError",
    "UntrustedArtifactError",
]
