"""Whether a verified artifact's header fits this process, decided before anything is unpickled.

One rule, used by the load path (api.py) and by ``torchkiln explain`` alike, so that explain predicts exactly what
the next call does: the header must name the requested key, its fingerprint must be compatible, every source range
Dynamo inlined must be unchanged on disk, and every re-checked guard on a module global must hold here (evaluated
against the globals a load would give torch, without unpickling anything). An artifact that fails only the CPU
extension list, the sources or a re-check is another *variant* of its key (``StaleArtifactError``); one built for
another key or another environment is ``IncompatibleArtifactError``. What remains after a fit is decided at the
first call: torch's kept guards and the re-checks on the call's arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import cache_key, compiler, guard_fates
from torchkiln.errors import IncompatibleArtifactError, StaleArtifactError
from torchkiln.fingerprint import Fingerprint

__all__ = ["check_header"]


def check_header(
    header: Mapping[str, Any],
    *,
    key: str,
    store_key: str,
    fingerprint: Fingerprint,
    target: Any,
    is_module: bool,
    call: tuple[Sequence[Any], Mapping[str, Any]] | None = None,
) -> None:
    """Raise ``StaleArtifactError`` (another variant) or ``IncompatibleArtifactError`` unless the header fits.

    With ``call`` (the positional and keyword inputs), the re-checks on the call's arguments are evaluated too, on
    the frame locals the compiled entry would see; without it only those on module globals are.
    """
    stored = cache_key.CacheKey.from_dict(header.get("cache_key") or {})
    if stored.key != key:
        raise IncompatibleArtifactError(
            f"the artifact stored under {store_key} was built for {stored.key}",
            where=store_key,
            fix="delete it with `torchkiln rm KEY`; `torchkiln explain` shows what differs",
        )
    built_for = Fingerprint.from_dict(header.get("fingerprint") or {})
    if fingerprint.key_fields() == built_for.key_fields() and fingerprint.incompatibilities(built_for):
        # Only the CPU extension list can differ under one key (fingerprint.key_fields): another CPU's variant.
        raise StaleArtifactError(
            "; ".join(fingerprint.incompatibilities(built_for)),
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built for this CPU, or compiles it",
        )
    fingerprint.check_compatible(built_for, where=store_key)
    changed = compiler.inlined_sources_changed(header.get("inlined_sources") or [])
    if changed:
        raise StaleArtifactError(
            f"source changed since the artifact was built: {', '.join(changed[:5])}",
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built from these sources, or compiles it",
        )
    rechecker = guard_fates.Rechecker.of(header.get("guards") or [], header.get("guard_globals") or {})
    mismatches = rechecker.mismatches(compiler.portable_globals(target, is_module), None, scope="global")
    if mismatches:
        raise StaleArtifactError(
            f"{len(mismatches)} module global(s) the graph was specialized on differ here: "
            + "; ".join(mismatches[:3]),
            where=store_key,
            fix="nothing to do: torchkiln looks for the variant built for these values, or compiles it",
        )
