"""Fix ``guard-state-singletons``: an unread module attribute holding ``torch.float32`` breaks every load.

Symptom (torch 2.11 and 2.13 on CPU, checked here; 2.10 not checked): a module that merely *holds* a dtype its
forward never reads (``self.unused_dtype = torch.float32``; transformers' ``PaliGemmaModel.__init__`` sets
``self.text_config_dtype``) compiles and saves, but every load, in any process, fails with
``TypeError: empty_strided(): argument 'dtype' must be torch.dtype, not _Missing`` (torchkiln: ``torch could not
load the artifact: TypeError: ...``, then a recompile in every process).

Cause: ``torch._dynamo.guards.GuardsStatePickler`` prunes from the saved guard state what no guard reaches. When
its ``reducer_override`` pickles an nn.Module, every attribute that is not a tensor, a module or a callable and
that has no guard manager is recorded **by ``id()``** in ``missing_values`` (``pickle_guards_state`` records the
unguarded leaves of the frame's locals the same way), and any object whose id is recorded pickles as
``_Missing("missing values")``. ``id()`` names the object, not the reference: ``torch.float32`` is one object per
process, so after the module the dtype of every tensor saved later in the state (the meta copies of parameters and
inputs) is ``_Missing`` too, and rebuilding them raises. Measured on torch 2.13 by unpickling the guard state:

- ``torch.dtype``: the load fails whenever the held dtype is the dtype of any tensor in the guard state.
- ``torch.device``: a plain device attribute is *not* hit: ``torch.device`` objects are not interned (every
  ``t.device`` or ``torch.device("cpu")`` is a new object). Hit only when the attribute is the device object of the
  active device context (``torch.get_default_device()`` under ``torch.set_default_device(torch.device("cpu", 0))``):
  the saved ``current_device`` and the device of the ``DeviceContext`` mode become ``_Missing`` (it still loads).
- ``enum.Enum`` members: hit when the same member is also saved through a path without a guard manager (a list
  element ``self.modes[0]`` whose ``ID_MATCH`` guard the serializer drops): that copy becomes ``_Missing``; it loads,
  because the only guard that would read it cannot be serialized anyway.
- ``torch.layout``, ``torch.memory_format``, ``Ellipsis``: pruned the same way; no second reference in the states
  measured here (upstream's PR names ``Ellipsis`` as a code constant of every ``x[...]``).
- Never hit: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes`` and exact ``tuple``/``list``/``dict``/
  ``set``: the C pickler saves them without asking ``reducer_override``, so even their contents are saved by value.

Fix: ``GuardsStatePickler.reducer_override`` is wrapped; before the original runs, an object that is recorded in
``missing_values`` and is a shared singleton that pickles by name (``torch.dtype``, ``torch.layout``,
``torch.memory_format``, ``torch.qscheme``, ``Ellipsis``, ``NotImplemented``), by value (``torch.device``) or by
class and value (an ``enum.Enum`` member of a class reachable as ``module.qualname``) is taken out of
``missing_values``, so it is saved by value everywhere it occurs (the unread attribute included: a few bytes).
Everything else stays pruned exactly as torch prunes it.

Upstream: pytorch#194249 ("[guards] Do not prune interned values, which id()-keyed pruning cannot scope") and
pytorch#197749 ("[dynamo] Never prune an interned singleton from guard state"), both closed, neither in a release
installed here. Affected: torch >=2.10.dev0 (no upper bound until a release carries the fix; the probe retires it).
Touches: ``torch._dynamo.guards.GuardsStatePickler.reducer_override`` (a hook on the one wrapper of
compat.guard_state_pickler_patch, which keeps the original for ``revert``) and its ``missing_values`` (read, entries
removed); the probe also calls ``torch._dynamo.package.load_guards_state``. A torch without ``GuardsStatePickler``
or its ``missing_values`` reports ``not-applicable`` and is never patched.
"""

from __future__ import annotations

import enum
import io
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat import guard_state_pickler_patch
from torchkiln.compat.fix import Fix
from torchkiln.compat.references import saveable_by_reference

__all__ = ["FIX", "is_shared_singleton"]

FIX_ID = "guard-state-singletons"


def _by_name_types() -> tuple[type, ...]:
    import torch

    names = ("dtype", "layout", "memory_format", "qscheme", "device")
    return tuple(t for t in (getattr(torch, n, None) for n in names) if isinstance(t, type))


def is_shared_singleton(value: Any) -> bool:
    """True for a value that may be shared process-wide and that a fresh process rebuilds from a name or value."""
    if value is Ellipsis or value is NotImplemented:
        return True
    if isinstance(value, enum.Enum):
        # pickled as (class, (value,)): the class must be importable by name and the value must find this member
        cls = type(value)
        try:
            return saveable_by_reference(cls) and cls(value.value) is value
        except (ValueError, TypeError):
            return False
    return type(value) in _by_name_types()


def _keep_by_value(pickler: Any, obj: Any, call_next: Any) -> Any:
    missing = getattr(pickler, "missing_values", None)
    if missing is not None and id(obj) in missing and is_shared_singleton(obj):
        del missing[id(obj)]
    return call_next()


def _probe() -> bool:
    """Save a tiny module holding an unread ``torch.float32`` and a float32 tensor, as Dynamo saves guard state.

    Both are in the guard tree (as the module and a parameter are when Dynamo guards them); the attribute is not.
    The bytes are read back with torch's own ``load_guards_state``: with the bug the tensor cannot be rebuilt
    (``empty_strided(): argument 'dtype' must be torch.dtype, not _Missing``) or comes back without its dtype.
    """
    import torch
    from torch._dynamo.package import load_guards_state

    cls = guard_state_pickler_patch.target_class()
    module = torch.nn.Module()
    module.__dict__["unused_dtype"] = torch.float32  # where nn.Module.__setattr__ puts a plain value
    tensor = torch.zeros(2, dtype=torch.float32)
    buffer = io.BytesIO()
    cls({id(module): module, id(tensor): tensor}, {}, {}, buffer).dump((module, tensor))
    try:
        _, loaded = load_guards_state(buffer.getvalue())
    except TypeError as exc:
        if "_Missing" in str(exc):
            return True
        raise
    return getattr(loaded, "dtype", None) is not torch.float32


# After the runtime-environment fixes, which patch another function. Its hook on the guard-state pickler runs before
# self-pickling-local-modules' (45): it only takes interned singletons out of ``missing_values``, which that fix never
# saves, so the order changes no result; it keeps the place it was added in, so doctor's table reads the same.
FIX = Fix(
    id=FIX_ID,
    title="shared singletons (dtypes, devices, enum members) survive guard-state pruning by value",
    upstream="pytorch#194249, pytorch#197749 (closed; not in 2.11 or 2.13)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=("torch._dynamo.guards.GuardsStatePickler.reducer_override",),
    targets_exist=lambda: guard_state_pickler_patch.target_class() is not None,
    probe=_probe,
    apply=lambda: guard_state_pickler_patch.add(FIX_ID, _keep_by_value),
    revert=lambda: guard_state_pickler_patch.remove(FIX_ID),
    is_applied=lambda: guard_state_pickler_patch.has(FIX_ID),
    order=40,
)
