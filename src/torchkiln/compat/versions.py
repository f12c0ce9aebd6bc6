"""Which torch is running, and whether torchkiln supports it.

Versions are compared with ``packaging`` (never as strings): ``2.10.0a0+git`` nightlies, ``2.11.0+cu130`` local
builds and release candidates all order correctly, and fix ranges use ``.dev`` bounds so nightlies count.
"""

from __future__ import annotations

import functools
import importlib.metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from torchkiln.errors import UnsupportedTorchError

__all__ = ["MIN_TORCH", "check_supported", "in_range", "torch_version"]

#: The first torch whose aot_compile can save and load a compiled function.
MIN_TORCH = Version("2.10.0.dev0")


@functools.cache
def torch_version() -> Version:
    """The running torch's version, without its local part (``2.11.0+cu130`` -> ``2.11.0``)."""
    try:
        import torch

        raw: str = str(torch.__version__)
    except ImportError:  # pragma: no cover - torch is a hard dependency; this is the readable failure
        raw = importlib.metadata.version("torch")
    try:
        return Version(Version(str(raw)).public)
    except InvalidVersion as exc:
        raise UnsupportedTorchError(
            f"cannot parse the torch version {raw!r}",
            where="torch.__version__",
            fix="install a released torch (>= 2.10) or a nightly with a PEP 440 version",
        ) from exc


def in_range(spec: SpecifierSet, version: Version | None = None) -> bool:
    """``version`` (default: the running torch) lies in ``spec``, pre-releases and nightlies included."""
    return spec.contains(version or torch_version(), prereleases=True)


def check_supported(version: Version | None = None) -> None:
    """Raise ``UnsupportedTorchError`` on torch older than 2.10, where aot_compile cannot save a function."""
    version = version or torch_version()
    if version < MIN_TORCH:
        raise UnsupportedTorchError(
            f"torch {version} is too old for torchkiln: aot_compile's save/load first shipped in torch 2.10",
            where="the running Python environment",
            fix="pip install 'torch>=2.10' (torchkiln is tested on 2.10 to 2.14)",
        )
