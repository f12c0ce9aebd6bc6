"""What one compiled target's specializations share and what each one is: ``Recipe`` (torchkiln.compile's
arguments but the target and the inputs), ``Specialization`` (the public record of one artifact), and the
``family`` of a request, the unit ``dynamic=None`` reasons about (specializer.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from torchkiln import cache_key, compiler, request
from torchkiln.describe import canonical_json
from torchkiln.header import ArtifactHeader

__all__ = ["TIMING_KEYS", "Entry", "Recipe", "Specialization", "family_of"]

#: Every ``timings`` key, on a hit and on a miss alike (0.0 for a phase that did not run), so a dashboard or a
#: ``--json`` consumer reads one shape. Seconds.
TIMING_KEYS = (
    "key",
    "store_get",
    "decode",
    "restore_kernels",
    "load",
    "lock_wait",
    "compile",
    "encode",
    "check_loadable",
    "publish",
    "total",
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What every specialization of one compiled target shares: ``torchkiln.compile``'s arguments but the target
    and the inputs. ``cache`` is kept as the caller gave it, so that a pickled or copied module opens it again."""

    cache: Any = None
    name: str | None = None
    dynamic: bool | None = None
    backend: str = "inductor"
    mode: str | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    strict: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Recipe:
        return self  # immutable; a Store in it is shared, not copied

    def key_options(self) -> dict[str, Any]:
        """The compile options the key names (``request.key_options``)."""
        return request.key_options(self.mode, self.options)


@dataclasses.dataclass(frozen=True)
class Specialization:
    """One artifact a compiled target runs: the store key, whether it was loaded from the cache (``hit``), whether
    it serves a range of sizes (``dynamic``), its size in bytes and the seconds each phase took (``TIMING_KEYS``)."""

    key: str
    hit: bool
    dynamic: bool
    artifact_bytes: int
    timings: Mapping[str, float]
    header: ArtifactHeader | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass
class Entry:
    key: str  # the store key (a variant's own key where it is one)
    function: compiler.LoadedFunction
    header: ArtifactHeader | None  # None: compiled here but not saveable
    artifact_bytes: int
    requested: str = ""  # the key the request asked for
    family: str = ""
    dynamic: bool = False
    info: Specialization | None = None


def family_of(key: cache_key.CacheKey) -> str:
    """The request with every tensor size and stride erased (ranks kept): what ``dynamic=None`` calls one family."""

    def erase(value: Any) -> Any:
        if isinstance(value, dict):
            if "shape" in value and "dtype" in value:  # one tensor's spec (describe._tensor)
                return {k: (len(v) if k in ("shape", "stride") else erase(v)) for k, v in value.items()}
            return {k: erase(v) for k, v in value.items()}
        if isinstance(value, list):
            return [erase(v) for v in value]
        return value

    parts = [canonical_json(erase(p.description)) if p.name == "inputs" else p.digest for p in key.parts]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()
