"""CPython's import lock, as ``torchkiln.preload`` holds it: taken only at a moment no other thread imports.

While one thread holds ``_imp.acquire_lock()`` (the lock import hooks use, re-entrant for its holder), any other
thread that imports a module not yet in ``sys.modules`` waits for it *before* it takes that module's own lock
(``importlib._bootstrap._get_module_lock``), so no module is ever imported by two threads at once. The holder must
never wait for another thread while it holds it; taking it while another thread is inside an import (and so holds a
module lock the holder may need) would be the deadlock, hence :func:`hold_when_no_import_runs`.

Probe: CPython 3.11-3.14 with ``_imp.acquire_lock``/``release_lock``; elsewhere :func:`import_lock` is None and the
caller takes the plain path (everything on its own thread).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

__all__ = ["ImportLock", "hold_when_no_import_runs", "import_lock", "importing_threads"]

#: (acquire, release) of CPython's import lock
ImportLock = tuple[Any, Any]


def import_lock() -> ImportLock | None:
    """CPython's import lock (acquire, release), where this interpreter has it; else None (the plain path)."""
    import _imp

    acquire, release = getattr(_imp, "acquire_lock", None), getattr(_imp, "release_lock", None)
    if sys.implementation.name != "cpython" or not (3, 11) <= sys.version_info[:2] <= (3, 14):
        return None
    if not (callable(acquire) and callable(release)):
        return None
    return acquire, release


def importing_threads(exclude: set[int]) -> set[int]:
    """Threads (other than ``exclude``) inside an import right now: the owners of importlib's module locks.

    Read with the import lock held, so no module lock is created meanwhile. importlib's own bookkeeping
    (``_bootstrap._module_locks``: name -> weakref to a ``_ModuleLock`` whose ``owner`` is the importing thread's
    id, None when free; CPython 3.11-3.14); where it looks otherwise, nothing is reported (the documented rule,
    call preload between statements, is what remains)."""
    from importlib import _bootstrap

    locks = getattr(_bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return set()
    owners = set()
    for ref in list(locks.values()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if isinstance(owner, int) and owner not in exclude:
            owners.add(owner)
    return owners


def hold_when_no_import_runs(lock: ImportLock, exclude: set[int], limit: float) -> bool:
    """Take the import lock at a moment no thread outside ``exclude`` (this one is always excluded) is inside an
    import: one could hold a module lock this thread will need, and wait for the import lock. False when other
    threads kept importing for ``limit`` seconds (then the lock is not held)."""
    exclude = exclude | {threading.get_ident()}
    deadline = time.monotonic() + limit
    while True:
        lock[0]()
        if not importing_threads(exclude):
            return True
        lock[1]()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
