"""Cache stores and the one function that turns a user's cache argument into one: ``open_store``.

This package module owns where the cache is (explicit argument, else ``TORCHKILN_CACHE``, else the platform
user cache dir) and the URL scheme registry. Like fsspec, a scheme maps to a backend by *name*, imported only
when that scheme is used, so a missing optional package (s3fs, gcsfs, ...) breaks only its own scheme, with an
install hint instead of a bare ImportError.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast

import platformdirs

from torchkiln import settings
from torchkiln.errors import ConfigError, StoreError
from torchkiln.store.base import ARTIFACT_SUFFIX, INSTALL_HINTS, Store, StoreEntry, check_key
from torchkiln.store.local import LAYOUT_VERSION, LocalStore
from torchkiln.store.memory import MemoryStore

__all__ = [
    "ARTIFACT_SUFFIX",
    "LAYOUT_VERSION",
    "LocalStore",
    "MemoryStore",
    "Store",
    "StoreEntry",
    "check_key",
    "default_local_root",
    "open_store",
]

#: Remote schemes are served by the tiered store (local read-through copy + remote), found by name.
_TIERED = "torchkiln.store.tiered:open_tiered"


ENV_CACHE = settings.ENV_CACHE


def default_local_root() -> Path:
    """``<user cache dir>/torchkiln`` (``$XDG_CACHE_HOME/torchkiln`` on Linux when set), without ``v1``."""
    return Path(platformdirs.user_cache_dir("torchkiln", appauthor=False))


def open_store(url: str | os.PathLike[str] | None = None) -> Store:
    """The store named by ``url``, else by ``$TORCHKILN_CACHE``, else the default local root.

    An unknown scheme is a ``ConfigError`` (a typo, not an outage); an unreachable store is a ``StoreError``.

    Accepted: a plain path or ``file://`` URL (LocalStore), ``memory://name`` (MemoryStore), and ``s3://``,
    ``gs://`` or any other fsspec URL (a tiered store: a local copy under ``default_local_root()`` in front of
    the remote).
    """
    if url is None:
        url = settings.cache_url()
    if url is None:
        return LocalStore(default_local_root())
    if not isinstance(url, str):
        return LocalStore(url)
    scheme, sep, rest = url.partition("://")
    if not sep or (len(scheme) == 1 and scheme.isalpha()):  # a path (a drive letter is not a scheme)
        return LocalStore(url)
    scheme = scheme.lower()
    if scheme == "file":
        # file:///abs/path -> /abs/path; file://localhost/abs/path names the same file (RFC 8089).
        return LocalStore(rest.removeprefix("localhost") or "/")
    if scheme == "memory":
        return MemoryStore(rest.strip("/") or "default")
    return _open_remote(url, scheme)


def _open_remote(url: str, scheme: str) -> Store:
    if not _fsspec_knows(scheme):
        raise ConfigError(
            f"unknown cache URL scheme {scheme!r}",
            where=url,
            fix="use a local path, file://, memory://NAME, s3://BUCKET/PREFIX or another fsspec URL",
        )
    module_name, _, func_name = _TIERED.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise StoreError(
            "remote caches are not available in this torchkiln build (torchkiln.store.tiered is missing)",
            where=url,
            fix="use a local cache path, or upgrade torchkiln",
        ) from exc
    open_tiered = cast("Callable[..., Store]", getattr(module, func_name))
    try:
        return open_tiered(url, local_root=default_local_root())
    except ImportError as exc:
        hint = INSTALL_HINTS.get(scheme, f"install the fsspec backend for {scheme}://")
        raise StoreError(
            f"the package that serves {scheme}:// URLs is not installed ({exc})",
            where=url,
            fix=hint,
        ) from exc


def _fsspec_knows(scheme: str) -> bool:
    try:
        from fsspec.registry import known_implementations, registry
    except ImportError:  # fsspec is a dependency, but a broken env should still get the clear error below
        return scheme in INSTALL_HINTS
    return scheme in known_implementations or scheme in registry
