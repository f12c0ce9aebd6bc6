"""Fix ``self-pickling-local-modules``: a module of a local class cannot be guarded in a saved artifact, even one that
says how to pickle itself; since transformers 5.25 that is every Llama-family model.

Symptom (torch 2.11 and 2.13 on CPU, checked here; transformers 5.25 with kernels 0.19): compiling a
``LlamaForCausalLM`` (and Qwen2, Qwen2-VL, PaliGemma's Gemma, ...) traces, but the save fails with ``TypeError: Type
<class 'transformers.models.llama.modeling_llama._create_func_module.<locals>.Func'> for object Func() cannot be
saved into torch.compile() package since it's defined in local scope`` (torchkiln: ``CompileError: torch could not
compile LlamaForCausalLM fullgraph: TypeError: ...``). transformers 5.25 made the ``kernels`` package a dependency,
and with it ``@use_kernel_func_from_hub`` turns ``apply_rotary_pos_emb`` into an instance of a class that kernels
builds per function (``_create_func_module``: a local ``nn.Module`` subclass); ``@use_kernelized_func`` gives every
attention layer its own instance in ``self._kernel_funcs``, which the forward calls. Dynamo guards that instance's
type (``TYPE_MATCH``), and refuses to save a type guard on a local class.

Cause: two checks in ``torch/_dynamo/guards.py`` that assume a local class can never be found again:
``GuardBuilder.TYPE_MATCH`` marks the guard ``_unserializable`` when the type's ``__qualname__`` is not its
``__name__`` (``CheckFunctionManager.serialize_guards`` then raises), and ``GuardsStatePickler.reducer_override``
saves an ``nn.Module`` of a local class as a plain ``torch.nn.Module`` with its ``__dict__`` (``_unpickle_module``),
so the loaded guard would compare the caller's object with the wrong type. kernels' class defines ``__reduce__``:
it is rebuilt from a module-level factory (``_rebuild_kernel_func(module, name)``, which finds the class through the
module global it wraps) plus its ``__dict__`` as state, or, for the global itself, by name.

Fix: an ``nn.Module`` whose local class defines its own ``__reduce__``/``__reduce_ex__``, and whose reduction is
either the module global that is this very object or a factory importable by name that, called here, builds an
object of exactly this class, is saved through that reduction (a hook on compat.guard_state_pickler_patch, after
torch's reducer has pruned the module's unguarded attributes, which pickle as ``_Missing`` in the state as before),
and its ``TYPE_MATCH`` guards are not marked unserializable (``serialize_guards`` is wrapped). The loaded guard then
checks the caller's object against the class the factory finds in the loading process. Every other guard on the
object is unchanged; the values torch's rebuilt guards capture are re-checked against the compile's (guard_fates:
``kept by torch, value re-checked``), so state the reduction takes from the loading process cannot pass unchecked,
and a class that no longer rebuilds fails the guard: a miss, never a run. Anything else stays torch's error.

Upstream: not reported upstream that we know of (searched 2026-12-03); torch 2.13 behaves the same.
Affected: torch >=2.10.dev0 (no upper bound until a release changes it; the probe retires it).
Touches: ``torch._dynamo.guards.CheckFunctionManager.serialize_guards`` (wrapped) and
``GuardsStatePickler.reducer_override`` (a hook; ``_unpickle_module`` is read to recognise torch's reduction); the
probe runs ``torch._dynamo.convert_frame.fullgraph_capture`` and ``torch._dynamo.package.load_guards_state``.
"""

from __future__ import annotations

import functools
import pickle
import sys
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat import guard_state_pickler_patch
from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix
from torchkiln.compat.references import saveable_by_reference

__all__ = ["FIX", "rebuilds_its_own_class"]

FIX_ID = "self-pickling-local-modules"


def rebuilds_its_own_class(obj: Any) -> bool:
    """True for an ``nn.Module`` of a local class whose own reduction brings back an object of that very class."""
    import torch

    cls = type(obj)
    if not isinstance(obj, torch.nn.Module) or cls.__qualname__ == cls.__name__:
        return False  # torch's own test for a local class (guards.py), so nothing else changes
    if "__reduce__" not in vars(cls) and "__reduce_ex__" not in vars(cls):
        return False  # the class never said how to pickle itself
    try:
        return _brings_back(obj, obj.__reduce_ex__(pickle.DEFAULT_PROTOCOL))
    except Exception:  # noqa: BLE001 - a reduction (or its factory, run here as the load will) that fails
        return False


def _brings_back(obj: Any, reduced: Any) -> bool:
    if isinstance(reduced, str):  # pickle saves it as the global ``obj.__module__.reduced``
        module = sys.modules.get(getattr(obj, "__module__", None) or "")
        return module is not None and getattr(module, reduced, None) is obj
    if not isinstance(reduced, tuple) or len(reduced) < 2 or not isinstance(reduced[1], tuple):
        return False
    factory, args = reduced[0], reduced[1]
    return saveable_by_reference(factory) and type(factory(*args)) is type(obj)  # what the load will run


def _own_reduction(pickler: Any, obj: Any, call_next: Any) -> Any:
    reduction = call_next()
    unpickle_module = getattr(type(pickler), "_unpickle_module", None)
    if (
        isinstance(reduction, tuple)
        and reduction
        and unpickle_module is not None
        and reduction[0] == unpickle_module
        and rebuilds_its_own_class(obj)
    ):
        return NotImplemented  # pickle then uses the object's own __reduce_ex__
    return reduction


def _manager_class() -> Any:
    try:
        from torch._dynamo.guards import CheckFunctionManager
    except ImportError:
        return None
    return CheckFunctionManager if "serialize_guards" in vars(CheckFunctionManager) else None


_patch = ClassPatch(_manager_class, "serialize_guards")


def _replace_serialize_guards(original: Any) -> Any:
    @functools.wraps(original)
    def serialize_guards(self: Any, builder: Any, sorted_guards: Any, output_graph: Any) -> Any:
        for guard in sorted_guards:
            if not getattr(guard, "_unserializable", False) or guard.create_fn_name() != "TYPE_MATCH":
                continue
            try:
                value = builder.get(guard)
            except Exception:  # noqa: BLE001 - torch's own check will report it
                continue
            if rebuilds_its_own_class(value):
                guard._unserializable = False
        return original(self, builder, sorted_guards, output_graph)

    return serialize_guards


def _targets_exist() -> bool:
    return _manager_class() is not None and guard_state_pickler_patch.target_class() is not None


def _apply() -> None:
    guard_state_pickler_patch.add(FIX_ID, _own_reduction)
    _patch.apply(_replace_serialize_guards)


def _revert() -> None:
    _patch.revert()
    guard_state_pickler_patch.remove(FIX_ID)


def _is_applied() -> bool:
    return _patch.is_applied() and guard_state_pickler_patch.has(FIX_ID)


# -- the probe: the shape of kernels' function modules, saved and loaded as aot_compile saves guards ---------------
@functools.cache
def _probe_class() -> type:
    import torch

    class SelfPickling(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return x + 1

        def __reduce__(self) -> Any:
            return (_rebuild_probe_module, ())

    return SelfPickling


def _rebuild_probe_module() -> Any:
    return _probe_class()()


def _probe_function(holder: Any, x: Any) -> Any:
    return holder.funcs["f"](x)


def _probe() -> bool:
    """Capture a call of a self-pickling local module (Dynamo only), save its guards and load them back.

    With the bug the save raises ``TypeError: ... defined in local scope`` or the loaded object is a plain
    ``nn.Module``.
    """
    import torch
    from torch._dynamo import convert_frame
    from torch._dynamo.hooks import Hooks
    from torch._dynamo.package import load_guards_state
    from torch._dynamo.utils import dynamo_timed, get_metrics_context

    unsupported = set(getattr(torch._dynamo.guards.CheckFunctionManager, "UNSUPPORTED_SERIALIZATION_GUARD_TYPES", ()))

    def serializable(entries: Any) -> list[bool]:
        return [
            e.guard_type not in unsupported and not unsupported.intersection(e.derived_guard_types or ())
            for e in entries
        ]

    holder = torch.nn.Module()
    holder.__dict__["funcs"] = {"f": _probe_class()()}  # as use_kernelized_func keeps them: a plain dict
    # as aot_compile_fullgraph runs both: Dynamo counts and times inside a metrics context and a top-level event
    with get_metrics_context(), dynamo_timed("fullgraph_capture"):
        capture = convert_frame.fullgraph_capture(_probe_function, (holder, torch.ones(2)), {})
        try:
            check_fn = capture.graph_capture_output.build_guards(
                _probe_function.__code__, hooks=Hooks(guard_filter_fn=serializable), save=True, strict_error=True
            )
        except TypeError as exc:
            if "local scope" in str(exc):
                return True
            raise
    if check_fn.guards_state is None:  # torch saved no guard state: nothing of ours to fix
        return False
    state = load_guards_state(check_fn.guards_state)
    loaded = state.output_graph.local_scope["holder"].funcs["f"]
    return type(loaded) is not _probe_class()


# After guard-state-singletons (40), whose hook on the guard-state pickler runs first; the two touch disjoint objects
# (interned singletons, modules), so the order changes no result.
FIX = Fix(
    id=FIX_ID,
    title="a module of a local class that pickles itself (transformers' kernel-hub functions) is saved with its guards",
    upstream="not reported upstream (torch 2.13 behaves the same)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=(
        "torch._dynamo.guards.CheckFunctionManager.serialize_guards",
        "torch._dynamo.guards.GuardsStatePickler.reducer_override",
    ),
    targets_exist=_targets_exist,
    probe=_probe,
    apply=_apply,
    revert=_revert,
    is_applied=_is_applied,
    order=45,
)
