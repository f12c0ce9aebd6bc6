"""Which store a read-only cache command looks at: every tier of the cache it is given, each by itself.

A tiered cache (``s3://bucket/prefix``) is a local copy in front of a bucket. Read through ``TieredStore`` the CLI
would report the local copy's sizes and dates, call a bucket that does not answer "empty" (rc 0: a CI gate passed
with the bucket down), and copy bucket objects into the local tier merely by looking (issue 11). So ``ls``,
``inspect``, ``verify``, ``gc`` and ``rm`` address each tier directly (``--tier`` picks one), report which tier
each row comes from, and exit 1 when a tier cannot be read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torchkiln import settings
from torchkiln.cli._cachelib import UsageError
from torchkiln.errors import StoreError
from torchkiln.store import LocalStore, Store, open_store

__all__ = ["TIER_NAMES", "Tier", "select_tiers", "tiers_of"]

TIER_NAMES = ("local", "remote")


@dataclasses.dataclass(frozen=True)
class Tier:
    name: str  # "local" or "remote" ("local" also for a memory store: it is this process's own)
    store: Store

    @property
    def url(self) -> str:
        return self.store.url


def tiers_of(store: Store) -> list[Tier]:
    local = getattr(store, "local", None)
    remote = getattr(store, "remote", None)
    if local is not None and remote is not None:  # a TieredStore (not imported: it pulls in fsspec)
        return [Tier("local", local), Tier("remote", remote)]
    return [Tier("local" if isinstance(store, LocalStore) or "://" not in store.url else "remote", store)]


def _check_local_root(store: LocalStore, explicit: bool) -> None:
    """A cache path that does not exist, or is a file, is an error when the user named it (``0 artifacts``
    would hide a typo); the default root that no compile has created yet is simply empty."""
    root = Path(store.root)
    if root.exists() and not root.is_dir():
        raise StoreError("the cache path is not a directory", where=str(root), fix="pass the cache directory")
    if not root.exists() and explicit:
        raise StoreError(
            "no cache at this path",
            where=str(root),
            fix="check the path; `torchkiln doctor` shows the cache in use (--cache, TORCHKILN_CACHE or the default)",
        )


def select_tiers(url: str | None, tier: str | None) -> list[Tier]:
    """The tiers of the cache ``url`` names (else ``TORCHKILN_CACHE``, else the user cache), or the one ``tier``."""
    store = open_store(url)
    # The local tier of an s3:// cache is the default root: only a local path the user gave must exist.
    explicit = isinstance(store, LocalStore) and (url is not None or settings.cache_url() is not None)
    tiers = tiers_of(store)
    if tier is not None:
        chosen = [t for t in tiers if t.name == tier]
        if not chosen:
            raise UsageError(
                f"the cache {tiers[0].url} has no {tier} tier",
                fix=f"--tier takes one of: {', '.join(t.name for t in tiers)}",
            )
        tiers = chosen
    for item in tiers:
        if isinstance(item.store, LocalStore):
            _check_local_root(item.store, explicit)
    return tiers
