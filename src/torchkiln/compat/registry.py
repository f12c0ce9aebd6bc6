"""The forward-fix registry: which upstream bugs the running torch has, and applying the fixes for them.

A fix is one upstream bug (compat/fixes/<id>.py). It is active exactly where the bug is: the running torch must lie
in the fix's affected range (a ``packaging`` SpecifierSet with ``.dev`` bounds) *and* the fix's live probe must show
the bug on a tiny function. A fix whose target names do not exist on the running torch reports
``not-applicable`` and is never imported into action (the vLLM version of the builtins fix broke torch 2.9 with an
unguarded import). Nothing is patched when torchkiln is imported: ``apply_fixes()`` does it, explicitly and
idempotently; ``torchkiln.compile`` calls it on the compile path only (every fix here repairs what torch *saves*,
so the load path needs none of them).

The table is discovered, not listed: every module in compat/fixes/ whose name does not start with ``_`` is a fix
and exposes its ``Fix`` record (compat/fix.py) as the module-level ``FIX``, so adding a fix is adding a file. The
table is ordered by each record's ``order``, then ``id``, the same in every process. A fix module that fails to
import, or has no ``FIX``, is listed as ``broken`` with the reason: it never stops the other fixes, and nothing
raises ImportError at probe or apply time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import pkgutil
import threading
from collections.abc import Iterator, Sequence

from packaging.specifiers import SpecifierSet

from torchkiln.compat.fix import Fix, FixState, FixStatus
from torchkiln.compat.versions import in_range, torch_version
from torchkiln.errors import UnknownFixError

__all__ = [
    "FIXES_PACKAGE",
    "BrokenFix",
    "Fix",
    "FixState",
    "FixStatus",
    "apply_fixes",
    "apply_load_fixes",
    "compile_scope",
    "discover",
    "fixes",
    "get_fix",
    "status",
]

log = logging.getLogger("torchkiln.compat")

#: The package whose modules are the fixes (``discover`` reads it; tests point ``discover`` elsewhere).
FIXES_PACKAGE = "torchkiln.compat.fixes"

_LOCK = threading.Lock()
#: ids of fixes whose probe raised in this process (their state is an assumption)
_FAILED_PROBES: set[str] = set()


def _nothing() -> None:
    """Apply and revert of a broken fix: it patches nothing."""


def _no() -> bool:
    return False


@dataclasses.dataclass(frozen=True)
class BrokenFix(Fix):
    """The registry's stand-in for a fix module that could not be loaded; ``reason`` says why.

    It touches nothing: its targets never exist, applying and reverting it do nothing, and its state is
    ``broken``. Its id is the module's name with dashes (``my_fix.py`` -> ``my-fix``), the convention of the fixes.
    """

    reason: str = ""


def _broken(module: str, reason: str, taken: set[str]) -> BrokenFix:
    short = module.rsplit(".", 1)[-1]
    fix_id = short.replace("_", "-")
    log.warning("forward fix module %s is broken (%s); it is reported as broken and never applied", module, reason)
    return BrokenFix(
        id=fix_id if fix_id not in taken else module,
        title=f"the fix module {module} could not be loaded",
        upstream="unknown (the fix module did not load)",
        affected=SpecifierSet(),
        fixed_in=None,
        touches=(),
        targets_exist=_no,
        probe=_no,
        apply=_nothing,
        revert=_nothing,
        is_applied=_no,
        reason=reason,
    )


def discover(package: str = FIXES_PACKAGE) -> tuple[Fix, ...]:
    """Every fix in ``package``: one per public module, in application order (``order``, then ``id``).

    Never raises for a fix module: one that fails to import (any exception, a SyntaxError included), lacks a
    ``FIX`` record or repeats another's id becomes a ``BrokenFix`` naming the cause.
    """
    found: list[Fix] = []
    taken: set[str] = set()
    # A package that cannot be imported at all is a broken installation, not a broken fix: that one raises.
    root = importlib.import_module(package)
    # iter_modules order depends on the file system; sorting by name makes the scan (and the warnings) stable.
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # private helpers of the fixes, not fixes
        module_name = f"{package}.{info.name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a fix that cannot import must not break the others (DESIGN.md §6)
            record: Fix = _broken(module_name, f"import failed: {type(exc).__name__}: {exc}", taken)
        else:
            candidate = getattr(module, "FIX", None)
            if not isinstance(candidate, Fix):
                record = _broken(module_name, "the module defines no FIX (a torchkiln.compat.fix.Fix)", taken)
            elif candidate.id in taken:
                record = _broken(module_name, f"its FIX repeats the id {candidate.id!r} of another fix", taken)
            else:
                record = candidate
        taken.add(record.id)
        found.append(record)
    return tuple(sorted(found, key=lambda fix: (fix.order, fix.id)))


@functools.cache
def _all_fixes() -> tuple[Fix, ...]:
    # Discovered on first use, not at module import: the fix modules import torch internals lazily themselves,
    # and building the table must stay cheap for `torchkiln doctor`.
    return discover()


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
    except Exception as exc:  # noqa: BLE001 - a probe that cannot run is reported, never raised
        # A probe that cannot run proves nothing. Inside the affected range the conservative answer is "needed":
        # every fix here only adds what a save would otherwise lack, so applying it where the bug is absent is a
        # no-op, while skipping it where the bug lives breaks every load.
        log.warning("probe for fix %s failed (%s: %s); assuming the bug is present", fix_id, type(exc).__name__, exc)
        _FAILED_PROBES.add(fix_id)
        return True, f"probe could not run ({type(exc).__name__}: {exc}); assumed present", True
    return present, "the probe reproduces the bug" if present else "the probe shows no bug", False


def status(fix_id: str) -> FixStatus:
    fix = get_fix(fix_id)
    if isinstance(fix, BrokenFix):
        # Nothing can be probed: the bug may be present and unfixed, so doctor must count it as a failed check.
        return FixStatus(fix.id, fix.title, fix.upstream, "unknown", None, (), FixState.BROKEN, fix.reason, True)

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


def apply_load_fixes(*, triton: bool = True) -> list[FixStatus]:
    """Apply the needed fixes that repair a *load* (``Fix.repairs_load``), for a process that compiles nothing.

    The hit path never runs ``apply_fixes()`` (its probes trace tiny functions with Dynamo); a bug in how torch
    reads back what it saved still has to be fixed there, so those fixes are applied here, with their own cheap
    probes (run once per process). Every other fix repairs what torch saves and stays untouched. ``triton=False``
    (an artifact without Triton kernels) leaves out the fixes that repair only how Triton kernels load
    (``Fix.needs_triton``).
    """
    return apply_fixes([fix.id for fix in _all_fixes() if fix.repairs_load and (triton or not fix.needs_triton)])


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
