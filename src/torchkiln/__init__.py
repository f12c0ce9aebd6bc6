"""torchkiln: compile a PyTorch model once, load the verified artifact anywhere, skipping Dynamo and Inductor.

Re-exports only. Importing torchkiln patches nothing: forward fixes are applied by ``apply_fixes()`` (which
``compile()`` calls for you).
"""

from __future__ import annotations

from torchkiln._version import __version__
from torchkiln.errors import (
    ArtifactCorruptError,
    CompileError,
    IncompatibleArtifactError,
    InvalidTargetError,
    StaleArtifactError,
    StoreError,
    TorchkilnError,
    UnknownFixError,
    UnsupportedTorchError,
    UntrustedArtifactError,
)

__all__ = [
    "__version__",
    "ArtifactCorruptError",
    "CompileError",
    "IncompatibleArtifactError",
    "InvalidTargetError",
    "StaleArtifactError",
    "StoreError",
    "TorchkilnError",
    "UnknownFixError",
    "UnsupportedTorchError",
    "UntrustedArtifactError",
]
