"""The artifact format version, and the one place that derives the cache roots' version directory from it.

Artifacts of different format versions live side by side: the version is in the cache key (the ``format`` part)
and in every cache root (``<root>/v1/`` locally, ``<prefix>/v1/`` remotely, the install memo under ``v1/memo``), so
a torchkiln that writes v2 never meets a v1 object under its own keys. docs/FORMAT.md section 7.
"""

from __future__ import annotations

__all__ = ["FORMAT_VERSION", "VERSION_DIR", "version_dir"]

#: The TKLN byte format version (docs/FORMAT.md); the kernel bundle inside an artifact shares it.
FORMAT_VERSION = 1


def version_dir(version: int = FORMAT_VERSION) -> str:
    """The directory name cache roots keep artifacts of ``version`` under: ``v1``."""
    return f"v{version}"


VERSION_DIR = version_dir()
