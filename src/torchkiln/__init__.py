"""torchkiln: compile a PyTorch model once, load the verified artifact anywhere, skipping Dynamo and Inductor.

Re-exports only. Importing torchkiln patches nothing: forward fixes are applied by ``apply_fixes()`` (which
``compile()`` calls for you).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torchkiln._version import __version__
from torchkiln.api import CompiledModule, compile
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

if TYPE_CHECKING:
    from torchkiln.compat.fix import FixStatus


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
