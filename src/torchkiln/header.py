"""``ArtifactHeader``: what an artifact says about itself, the schema docs/FORMAT.md section 2.1 specifies.

The artifact codec (artifact.py) stores the header as opaque JSON beside its own reserved keys (``format_version``,
``sections``). This module owns everything else in it: the builder writes an ``ArtifactHeader``, the loader and
the CLI read one, and no other module names a header key. ``from_dict`` checks every field's JSON type, so a
header that passed the sha256 (or was written by a buggy torchkiln) but has the wrong shape is refused as corrupt,
never half-read; keys a newer torchkiln adds are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchkiln.cache_key import CacheKey
from torchkiln.errors import ArtifactCorruptError
from torchkiln.fingerprint import Fingerprint

__all__ = ["ArtifactHeader"]

_FIX = "delete the artifact (torchkiln rm KEY) and compile again"


@dataclasses.dataclass(frozen=True)
class ArtifactHeader:
    """One artifact's header. ``guards``/``guard_globals``/``inlined_sources`` keep their JSON form: their owners
    (guard_fates.py, sources.py) parse them."""

    torchkiln_version: str
    created_at: str  # ISO 8601, UTC, seconds
    target: str  # qualname of the module's class, or of the function
    is_module: bool
    device_type: str | None  # where the graph's tensors live ("cpu", "cuda"); None when it has none
    cache_key: CacheKey
    fingerprint: Fingerprint
    fixes_applied: tuple[str, ...] = ()
    guards: tuple[dict[str, Any], ...] = ()
    guard_globals: Mapping[str, str] = dataclasses.field(default_factory=dict)
    inlined_sources: tuple[dict[str, Any], ...] = ()
    compile_seconds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Keys a newer writer added; kept so re-encoding loses nothing, never interpreted.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.cache_key.key

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form the codec stores (tuples become lists)."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            torchkiln_version=self.torchkiln_version,
            created_at=self.created_at,
            target=self.target,
            is_module=self.is_module,
            device_type=self.device_type,
            cache_key=self.cache_key.to_dict(),
            fingerprint=self.fingerprint.to_dict(),
            fixes_applied=list(self.fixes_applied),
            guards=[dict(g) for g in self.guards],
            guard_globals=dict(self.guard_globals),
            inlined_sources=[dict(s) for s in self.inlined_sources],
            compile_seconds=dict(self.compile_seconds),
        )
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "<header>") -> ArtifactHeader:
        """Read a decoded header (the codec's reserved keys are ignored); ``ArtifactCorruptError`` on a bad shape."""
        reader = _Reader(data, where)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(
            torchkiln_version=reader.text("torchkiln_version"),
            created_at=reader.text("created_at"),
            target=reader.text("target"),
            is_module=reader.typed("is_module", bool, "a boolean"),
            device_type=reader.optional_text("device_type"),
            cache_key=CacheKey.from_dict(reader.typed("cache_key", dict, "an object")),
            fingerprint=Fingerprint.from_dict(reader.typed("fingerprint", dict, "an object")),
            fixes_applied=tuple(reader.items("fixes_applied", str, "strings")),
            guards=tuple(reader.items("guards", dict, "objects")),
            guard_globals=reader.mapping("guard_globals", str, "strings"),
            inlined_sources=tuple(reader.items("inlined_sources", dict, "objects")),
            compile_seconds=reader.mapping("compile_seconds", (int, float), "numbers"),
            extra={k: v for k, v in data.items() if k not in known and k not in ("format_version", "sections")},
        )


@dataclasses.dataclass
class _Reader:
    data: Mapping[str, Any]
    where: str

    def _bad(self, name: str, wanted: str) -> ArtifactCorruptError:
        got = type(self.data.get(name)).__name__ if name in self.data else "missing"
        return ArtifactCorruptError(
            f"artifact header field {name!r} is not {wanted} ({got})", where=self.where, fix=_FIX
        )

    def typed(self, name: str, kind: type | tuple[type, ...], wanted: str) -> Any:
        value = self.data.get(name)
        # bool is an int: a count or a number field must not accept True, and is_module must not accept 1.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self._bad(name, wanted)
        return value

    def text(self, name: str) -> str:
        return str(self.typed(name, str, "a string"))

    def optional_text(self, name: str) -> str | None:
        return None if self.data.get(name) is None else self.text(name)

    def items(self, name: str, kind: type, wanted: str) -> list[Any]:
        values = self.data.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, kind) for v in values):
            raise self._bad(name, f"a list of {wanted}")
        return values

    def mapping(self, name: str, kind: type | tuple[type, ...], wanted: str) -> dict[str, Any]:
        values = self.data.get(name, {})
        if not isinstance(values, dict) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in values.values()
        ):
            raise self._bad(name, f"an object of {wanted}")
        return dict(values)
