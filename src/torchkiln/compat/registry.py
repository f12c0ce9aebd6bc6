"""The forward-fix registry: which upstream bugs the running torch has, and applying the fixes for them.

A fix is one upstream bug (compat/fixes/<id>.py). It is active exactly where the bug is: the running torch must lie
in the fix's affected range (a ``packaging`` SpecifierSet with ``.dev`` bounds) *and* the fix's live probe must show
the bug on a tiny function. A fix whose target names do not exist on the running torch reports
``not-applicable`` and is never imported into action (the vLLM version of the builtins fix broke torch 2.9 with an
unguarded import). Nothing is patched when torchkiln is imported: ``apply_fixes()`` does it, explicitly and
idempotently; ``torchkiln.compile`` calls it on the compile path only (every fix here repairs what torch *saves*,
so the load path needs none of them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence

from packaging.specifiers import SpecifierSet

from torchkiln.compat.versions import in_range, torch_version
from torchkiln.errors import UnknownFixError

__all__ = ["Fix", "FixState", "FixStatus", "apply_fixes", "compile_scope", "fixes", "get_fix", "status"]

log = logging.getLogger("torchkiln.compat")


class FixState(str, enum.Enum):
    NOT_APPLICABLE = "not-applicable"  # torch lacks the names the fix touches (e.g. torch 2.9's CaptureOutput)
    NOT_NEEDED = "not-needed"  # outside the affected range, or the probe shows no bug on this torch
    NEEDED = "needed"  # the probe shows the bug and the fix is not applied
    APPLIED = "applied"  # the fix is active in this process


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
    #: the probe raised: the state is an assumption (doctor treats it as a failed check)
    probe_failed: bool = False

    def to_dict(self) -> dict[str, object]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["touches"] = list(self.touches)
        return data


_LOCK = threading.Lock()
#: ids of fixes whose probe raised in this process (their state is an assumption)
_FAILED_PROBES: set[str] = set()


@functools.cache
def _all_fixes() -> tuple[Fix, ...]:
    # Imported here, not at module import: the fix modules import torch internals lazily themselves, and
    # building the table must stay cheap for `torchkiln doctor`.
    from torchkiln.compat.fixes import builtins_runtime_env, enable_aot_compile, guard_state_singletons, module_globals

    return (enable_aot_compile.FIX, builtins_runtime_env.FIX, module_globals.FIX, guard_state_singletons.FIX)


def fixes() -> tuple[Fix, ...]:
    """Every registered fix, in the order they are applied."""
    return _all_fixes()


def get_fix(fix_id: str) -> Fix:
    for fix in _all_fixes():
        if fix.id == fix_id:
            return fix
    known = ", ".join(f.id for f in _all_fixes())
    raise UnknownFixError(
        f"unknown fix id {fix_id!r}",
        where="torchkiln.compat",
        fix=f"use one of: {known} (`torchkiln doctor` lists them)",
    )


@functools.cache
def _probe(fix_id: str) -> tuple[bool, str, bool]:
    """Run a fix's probe once per process: (bug present?, detail). Probes exercise torch, so cache them."""
    fix = get_fix(fix_id)
    try:
        present = fix.probe()
    except Exception as exc:
        # A probe that cannot run proves nothing. Inside the affected range the conservative answer is "needed":
        # every fix here only adds what a save would otherwise lack, so applying it where the bug is absent is a
        # no-op, while skipping it where the bug lives breaks every load.
        log.warning("probe for fix %s failed (%s: %s); assuming the bug is present", fix_id, type(exc).__name__, exc)
        _FAILED_PROBES.add(fix_id)
        return True, f"probe could not run ({type(exc).__name__}: {exc}); assumed present", True
    return present, "the probe reproduces the bug" if present else "the probe shows no bug", False


def status(fix_id: str) -> FixStatus:
    fix = get_fix(fix_id)

    def make(state: FixState, detail: str, probe_failed: bool = False) -> FixStatus:
        return FixStatus(
            fix.id, fix.title, fix.upstream, str(fix.affected), fix.fixed_in, fix.touches, state, detail, probe_failed
        )

    if not fix.targets_exist():
        return make(FixState.NOT_APPLICABLE, f"torch {torch_version()} lacks {', '.join(fix.touches)}")
    if not in_range(fix.affected):
        return make(FixState.NOT_NEEDED, f"torch {torch_version()} is outside the affected range {fix.affected}")
    if fix.is_applied():
        failed = fix.id in _FAILED_PROBES
        return make(
            FixState.APPLIED, "active in this process" + ("; its probe could not run" if failed else ""), failed
        )
    present, detail, failed = _probe(fix.id)
    return make(FixState.NEEDED if present else FixState.NOT_NEEDED, detail, failed)


def apply_fixes(ids: Sequence[str] | None = None) -> list[FixStatus]:
    """Apply every needed fix (or only ``ids``); idempotent and thread-safe. Returns the resulting statuses."""
    selected = [get_fix(i) for i in ids] if ids is not None else list(_all_fixes())
    results: list[FixStatus] = []
    with _LOCK:
        for fix in selected:
            current = status(fix.id)
            if current.state is FixState.NEEDED:
                fix.apply()
                log.debug("applied fix %s (%s)", fix.id, fix.upstream)
                current = status(fix.id)
            results.append(current)
    return results


def applied_ids() -> list[str]:
    return [f.id for f in _all_fixes() if in_range(f.affected) and f.targets_exist() and f.is_applied()]


@contextlib.contextmanager
def compile_scope() -> Iterator[None]:
    """The scoped parts of the applied fixes, entered around torchkiln's own ``torch.compile`` call only."""
    with contextlib.ExitStack() as stack:
        for fix in _all_fixes():
            if fix.scope is not None and in_range(fix.affected) and fix.targets_exist() and fix.is_applied():
                stack.enter_context(fix.scope())
        yield
