"""The forward-fix records: ``Fix`` (what a fix module declares) and ``FixStatus`` (what the registry reports).

Every module in compat/fixes/ builds one ``Fix`` and exposes it as its module-level ``FIX``; it imports this
module and the shared helpers of compat/ (class_patch, runtime_env_patch, probing, references, versions), never
the registry and never another fix, so one broken fix cannot take the others down with it. registry.py discovers
the records and owns their states; this module owns only their shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Callable

from packaging.specifiers import SpecifierSet

__all__ = ["DEFAULT_ORDER", "Fix", "FixState", "FixStatus"]

#: The ``order`` of a fix that does not name one: after the shipped fixes, which use 10 to 40.
DEFAULT_ORDER = 100


# Not enum.StrEnum (ruff UP042): StrEnum changes str(FixState.APPLIED) from "FixState.APPLIED" to "applied", and
# callers may print states; the values (what doctor and to_dict() show) are the same either way.
class FixState(str, enum.Enum):  # noqa: UP042
    NOT_APPLICABLE = "not-applicable"  # torch lacks the names the fix touches (e.g. torch 2.9's CaptureOutput)
    NOT_NEEDED = "not-needed"  # outside the affected range, or the probe shows no bug on this torch
    NEEDED = "needed"  # the probe shows the bug and the fix is not applied
    APPLIED = "applied"  # the fix is active in this process
    BROKEN = "broken"  # the fix's module failed to import: its bug may be present, and nothing fixes it


@dataclasses.dataclass(frozen=True)
class Fix:
    """One forward fix. ``probe`` returns True when the running torch shows the bug (it runs torch for real)."""

    id: str
    title: str
    upstream: str
    affected: SpecifierSet
    fixed_in: str | None  # the torch release that fixed it upstream, None while upstream has not
    touches: tuple[str, ...]  # the torch names the fix patches or reads, for doctor and the docs
    targets_exist: Callable[[], bool]
    probe: Callable[[], bool]
    apply: Callable[[], None]
    revert: Callable[[], None]
    is_applied: Callable[[], bool]
    #: context entered around torchkiln's own torch.compile call only (for fixes that must not be global)
    scope: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    #: fixes are listed, probed and applied in ascending ``order``, then by ``id``; the fix module's comment at
    #: its ``FIX`` says why it sits where it does
    order: int = DEFAULT_ORDER
    #: the bug breaks (or slows) the *load* of what torch saved, so the fix must be active in a process that only
    #: loads: ``apply_load_fixes()`` applies these on the load path (their probes must be cheap: no compile)
    repairs_load: bool = False
    #: the bug lives in loading Triton kernels: a load of an artifact without them (a CPU one) skips the fix, so its
    #: probe (which may hash torch's sources for ``torch_key``) costs a CPU hit nothing
    needs_triton: bool = False


@dataclasses.dataclass(frozen=True)
class FixStatus:
    id: str
    title: str
    upstream: str
    affected: str
    fixed_in: str | None
    touches: tuple[str, ...]
    state: FixState
    detail: str
    #: the probe raised or could not be loaded (a broken fix module): the state is an assumption, and doctor
    #: treats it as a failed check
    probe_failed: bool = False

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["touches"] = list(self.touches)
        return data
