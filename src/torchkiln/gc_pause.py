"""Pausing Python's cyclic garbage collector while a hit imports and deserializes torch's compiler stack.

Why: a hit's load imports ~1,500 modules (``torch._dynamo``, ``torch._inductor``, sympy, ...) that allocate some
360,000 container objects. CPython starts a young collection every 700 allocations and, as the heap grows, full
collections that walk every live object (the program's model included), over and over while the heap doubles.
With the collector paused, a CPU hit's load step took 21 % less time (7 pairs, 2-core CPU) and an H100 hit's
12-22 % less in two of three runs (BENCHMARKS.md, "Start-up cuts"). torch pauses it the same way around its own
allocation-heavy state-dict walk (``torch.distributed.checkpoint.state_dict._gc_context``).

What it changes: nothing but *when* unreachable reference cycles are freed. Reference counting still frees every
object the moment its last reference goes; only cycles created during the pause wait for the collector's next full
collection after it (see below). No torch internals are touched, so there is no probe: ``TORCHKILN_GC_PAUSE=0``
turns it off.

Ending a pause without the deferred young collection: every container object allocated during the pause (the
~360,000 of the stack, and whatever other threads allocated meanwhile) is still in the youngest generation when the
collector comes back, so the next allocation starts a young collection that walks them all (on the 2-core CPU:
0.2-0.35 s at the end of a demo hit's load, 0.26-0.31 s on preload's thread after its imports, holding the GIL;
BENCHMARKS.md, "The pause ends without a young collection"). These objects are nearly all long-lived (modules,
classes, functions), so the outermost pause hands them straight to the oldest generation instead (``gc.freeze()``
then ``gc.unfreeze()``: two list splices, nothing walked), as if they had survived the young collections already.
Still only *when* changes: a cycle made during the pause is found by the next full collection instead of the next
young one, and since the objects do not count as new survivors they do not hasten that full collection either. It is
done only where it means exactly that: CPython with its GIL (the free-threaded build's freeze works differently),
the collector running when the pause began, and no objects frozen by the program (``gc.unfreeze`` would release
those too: a pre-fork server's frozen heap stays frozen).

Pauses nest and may come from two threads at once (``preload``'s thread and ``compile``): the collector is paused
by the first and resumed by the last, and only if it was running when the first began (a program that disabled
it keeps it disabled).
"""

from __future__ import annotations

import contextlib
import gc
import sys
import sysconfig
import threading
from collections.abc import Iterator

from torchkiln import settings

__all__ = ["paused"]

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the outermost pause found the collector running (and so turns it back on)


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector paused for the ``with`` block (unless ``TORCHKILN_GC_PAUSE=0``); nests across threads."""
    if not settings.gc_pause_requested():
        yield
        return
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                _age_pause_allocations()
                gc.enable()


#: gc.freeze/unfreeze mean "move to the permanent generation and back to the oldest" only on CPython with its GIL;
#: a fact of the build, so it is read once at import, not on every load.
_CAN_AGE = sys.implementation.name == "cpython" and not sysconfig.get_config_var("Py_GIL_DISABLED")


def _age_pause_allocations() -> None:
    """Move every tracked object to the oldest generation without walking them (module docstring), where that
    changes nothing but when cycles are collected; called with the collector still disabled."""
    if not _CAN_AGE or gc.get_freeze_count():
        return  # another build, or the program froze objects (gc.freeze): unfreeze would release them too
    gc.freeze()
    gc.unfreeze()
