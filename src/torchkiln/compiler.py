"""The one module that calls torch's AOT compile API: compile, serialize, deserialize, guard check.

It covers the differences between torch releases so nothing else has to: 2.10/2.11 attach ``.aot_compile`` only
when ``torch._dynamo.config.enable_aot_compile`` is set (compat's scoped ``enable-aot-compile`` fix), 2.10 loads
with ``load_compiled_function(f, *, f_globals)``, 2.11+ also take ``external_data`` (torchkiln never needs it:
an ``nn.Module`` target is passed as an argument of ``_entry.call_module``, not pickled).

Guards: torch's default filter for aot_compile drops guards by their *own* type only, but the serializer also
rejects guards whose *derived* guard types cannot be serialized (a ``CONSTANT_MATCH`` on the code object inside
the decorator that wraps a transformers ``forward``, a ``BUILTIN_MATCH`` on an activation function), so every
transformers model fails with ``PackageError: ID_MATCH guard cannot be serialized``. ``_SerializableGuardFilter``
keeps exactly the guards torch can serialize and check in another process, and gives every other one (own or
derived type unserializable, or rooted in the compiling frame's globals) a re-check: guard_fates.py records a
portable description of its value, checks it back here (``_self_check_guards``) and in the loading process.

Loading unpickles: callers hand this module bytes that artifact.py has already verified (length, sha256, HMAC).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle  # allowed here (tools/check_forbidden_imports.py): to recognise torch's pickling errors
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torchkiln import _entry, compat, gc_pause, guard_fates, inductor_cache
from torchkiln.closure_binding import bind_to_callers_closure
from torchkiln.compat import float_specialization
from torchkiln.errors import CompileError
from torchkiln.frames import call_args, loader_globals, portable_globals
from torchkiln.hints import hint_for
from torchkiln.loaded_function import LoadedFunction
from torchkiln.reasons import exception_reason
from torchkiln.sources import describe_inlined_sources
from torchkiln.targets import unwrap

__all__ = [
    "CompileResult",
    "LoadedFunction",
    "check_loadable",
    "compile_target",
    "exception_reason",
    "load",
    "torch_compile",
]

log = logging.getLogger("torchkiln.compiler")


def _unpicklable_types() -> tuple[type, ...]:
    """What torch's guard pickler replaces by a placeholder (torch._dynamo.guards._get_unsupported_types)."""
    try:
        from torch._dynamo.guards import _get_unsupported_types
    except ImportError:
        return ()
    found = _get_unsupported_types()
    return tuple(t for t in found if isinstance(t, type))


@dataclasses.dataclass
class _SerializableGuardFilter:
    """torch's guard filter for aot_compile: keep what torch can serialize, give every other guard a fate."""

    unsupported: frozenset[str]
    planner: guard_fates.FatePlanner = dataclasses.field(default_factory=guard_fates.FatePlanner)

    def __call__(self, entries: Sequence[Any]) -> list[bool]:
        keep: list[bool] = []
        # torch pickles a ProcessGroup (or a stream, a weakref) in the guarded scope as a placeholder, so a guard
        # torch would keep on or below one (``module.group.group_name``, from a tensor-parallel layer holding its
        # group) fails when the artifact is loaded (AttributeError: '_Missing' object has no attribute
        # 'group_name'), or rejects the live group in the next process. torchkiln re-checks them instead.
        opaque = [str(e.name) for e in entries if isinstance(getattr(e, "value", None), _unpicklable_types())]
        for entry in entries:
            derived = tuple(getattr(entry, "derived_guard_types", ()) or ())
            reasons = []
            if entry.is_global:
                # The compiling frame's globals do not travel: torchkiln re-checks these in the loading process.
                reasons.append("global")
            if any(str(entry.name) == root or str(entry.name).startswith((f"{root}.", f"{root}[")) for root in opaque):
                reasons.append("on an object torch does not pickle")
            if entry.guard_type in self.unsupported:
                reasons.append(f"type {entry.guard_type}")
            reasons += [f"derived {t}" for t in derived if t in self.unsupported]
            # The one key or attribute a DICT_CONTAINS / NOT_PRESENT_IN_GENERIC_DICT guard checks: Dynamo builds it
            # as functools.partial(GuardBuilder.X, key=... | attr=...).
            keywords = getattr(getattr(getattr(entry, "orig_guard", None), "create_fn", None), "keywords", None) or {}
            member = keywords.get("key", keywords.get("attr"))
            if reasons:
                self.planner.dropped(
                    entry.name,
                    entry.guard_type,
                    is_global=bool(entry.is_global),
                    value=getattr(entry, "value", None),
                    has_value=bool(getattr(entry, "has_value", False)),
                    why=", ".join(reasons),
                    member=member,
                )
            else:
                self.planner.kept(
                    entry.name,
                    entry.guard_type,
                    value=getattr(entry, "value", None),
                    has_value=bool(getattr(entry, "has_value", False)),
                )
            keep.append(not reasons)
        return keep


@dataclasses.dataclass
class CompileResult:
    function: LoadedFunction  # the compiled function, with its re-checks
    payload: bytes | None  # None when torch compiled the target but could not serialize it (see save_error)
    guards: list[dict[str, Any]]  # every guard and its fate (guard_fates.GuardRecord.to_dict)
    inlined_sources: list[dict[str, Any]]
    device_type: str
    fixes_applied: list[str]
    seconds: dict[str, float]
    save_error: str | None = None
    guard_globals: dict[str, str] = dataclasses.field(default_factory=dict)  # Rechecker.roots
    #: ``function`` is a plain torch.compile wrapper (recompiles itself on new inputs; no guard_check)
    jit: bool = False
    #: the retry that compiled it (``compat.float_specialization.NAME``), None for a first-attempt compile
    retried: str | None = None


def _is_serialization_failure(exc: BaseException) -> bool:
    """aot_compile failed saving what it traced (pickling guards or code), not tracing it."""
    return isinstance(exc, pickle.PicklingError) or "pickle" in type(exc).__name__.lower()


def compile_target(
    target: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    is_module: bool,
    dynamic: bool,
    backend: str | Callable[..., Any],
    options: Mapping[str, Any] | None,
) -> CompileResult:
    """aot_compile ``target`` for these inputs and serialize it. Raises ``CompileError`` with torch's reason."""
    from torch._dynamo.guards import CheckFunctionManager

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with gc_pause.paused():  # the first compile of a process imports torch's compiler stack here (gc_pause.py)
        statuses = compat.apply_fixes()
    seconds["fixes"] = time.perf_counter() - start
    start = time.perf_counter()
    _prime_memos()
    seconds["install_memo"] = time.perf_counter() - start
    guard_filter = _SerializableGuardFilter(frozenset(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES))
    compile_options: dict[str, Any] = dict(options or {})
    compile_options["guard_filter_fn"] = guard_filter
    fn: Callable[..., Any] = _entry.call_module if is_module else target
    where = type(target).__qualname__ if is_module else target.__qualname__
    loader_globals = portable_globals(target, is_module)  # before Dynamo installs its own names there
    full_args = call_args(target, is_module, args)
    retried: str | None = None
    start = time.perf_counter()
    try:
        with float_specialization.preserved_tensorify_state():
            try:
                compiled = _aot_compile(
                    fn, full_args, kwargs, dynamic=dynamic, backend=backend, options=compile_options
                )
            except Exception as exc:
                retry = float_specialization.retry_scope(exc)
                if retry is None:
                    raise
                # aot_compile does not perform the restart Dynamo asked for (compat/float_specialization.py): once
                # more with Python floats specialized, which is what torch.compile's restart does for those it names.
                log.info("aot_compile of %s raised %s; retrying with specialize_float=True", where, type(exc).__name__)
                guard_filter.planner = guard_fates.FatePlanner()  # the failed attempt's guards are not this graph's
                with retry:
                    compiled = _aot_compile(
                        fn, full_args, kwargs, dynamic=dynamic, backend=backend, options=compile_options
                    )
                retried = float_specialization.NAME
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if not _is_serialization_failure(exc):
            raise CompileError(
                f"torch could not compile {where} fullgraph: {exception_reason(exc)}",
                where=where,
                fix=hint_for(message),
            ) from exc
        # The graph traced, but aot_compile pickles its guards as it builds them and something they name cannot be
        # saved (a class defined in __main__ and gone from it, say). The target still runs compiled in this
        # process through plain torch.compile (JIT, not saved); the caller decides whether that is acceptable.
        seconds["aot_compile"] = time.perf_counter() - start
        return CompileResult(
            function=LoadedFunction(
                jit_compile(target, is_module=is_module, dynamic=dynamic, backend=backend, options=options), jit=True
            ),
            payload=None,
            guards=guard_filter.planner.to_header(),
            inlined_sources=[],
            device_type="unknown",
            fixes_applied=[s.id for s in statuses if s.state is compat.FixState.APPLIED],
            seconds=seconds,
            save_error=exception_reason(exc),
            jit=True,
        )
    seconds["aot_compile"] = time.perf_counter() - start
    start = time.perf_counter()
    payload: bytes | None = None
    save_error: str | None = None
    try:
        payload = _serialize(compiled)
    except Exception as exc:  # noqa: BLE001 - the compiled function still works in this process; the caller decides
        save_error = exception_reason(exc)
    seconds["serialize"] = time.perf_counter() - start
    roots = _self_check_guards(
        guard_filter.planner, compiled, call_args(target, is_module, args), kwargs, loader_globals
    )
    artifacts = compiled._artifacts
    guards = guard_filter.planner.to_header()
    return CompileResult(
        function=LoadedFunction(compiled, rechecker=guard_fates.Rechecker.of(guards, roots)),
        payload=payload,
        guards=guards,
        guard_globals=roots,
        inlined_sources=describe_inlined_sources(artifacts.source_info),
        device_type=str(artifacts.device_type),
        fixes_applied=[s.id for s in statuses if s.state is compat.FixState.APPLIED],
        seconds=seconds,
        save_error=save_error,
        retried=retried,
    )


def _self_check_guards(
    planner: guard_fates.FatePlanner,
    compiled: Any,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    loader_globals: Mapping[str, Any],
) -> dict[str, str]:
    """Evaluate every re-check against the compiled function's own globals and frame: what does not reproduce its
    recorded value here could never pass in another process, so it has no fate (and the artifact is not saved)."""
    fn = getattr(compiled, "fn", None)
    prepare = getattr(compiled, "prepare_f_locals", None)
    if fn is None or prepare is None:  # a torch whose AOTCompiledFunction lacks them: nothing can be re-checked
        return planner.self_check({}, {}, {})
    return planner.self_check(fn.__globals__, prepare(*args, **kwargs), loader_globals)


def _prime_memos() -> None:
    """What a compile takes from the per-install memos: torch's and Triton's source-tree hashes (or hashed once,
    memoized; Triton's only where it is installed: every compile there asks for it), and Inductor's Jinja templates
    (template_memo.py; before torch imports its kernel modules, which build them)."""
    inductor_cache.prime_torch_key()
    inductor_cache.prime_triton_key()
    inductor_cache.memoize_templates()


def _aot_compile(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    dynamic: bool,
    backend: str | Callable[..., Any],
    options: dict[str, Any],
) -> Any:
    try:
        with compat.compile_scope():
            # a copy per attempt: torch.compile pops guard_filter_fn out of the options it is given
            wrapper: Any = torch_compile()(fn, fullgraph=True, dynamic=dynamic, backend=backend, options=dict(options))
            return wrapper.aot_compile((args, dict(kwargs)))
    finally:
        inductor_cache.save_templates()  # the templates this compile built, for the next process (template_memo.py)


def jit_compile(
    target: Any, *, is_module: bool, dynamic: bool, backend: str | Callable[..., Any], options: Mapping[str, Any] | None
) -> Any:
    """Plain torch.compile of the same entry (compiles on first call, guards and recompiles itself; never saved)."""
    fn: Callable[..., Any] = _entry.call_module if is_module else target
    return torch_compile()(fn, fullgraph=True, dynamic=dynamic, backend=backend, options=dict(options or {}))


#: The attribute ``torchkiln.install()`` sets on its ``torch.compile`` replacement: torch's own function.
ORIGINAL_ATTRIBUTE = "_torchkiln_original"


def torch_compile() -> Callable[..., Any]:
    """torch's own ``torch.compile``, also while ``torchkiln.install()`` routes ``torch.compile`` through torchkiln
    (torchkiln's own compile must never be routed back into itself)."""
    import torch

    return getattr(torch.compile, ORIGINAL_ATTRIBUTE, torch.compile)


def _serialize(compiled: Any) -> bytes:
    serialize = getattr(type(compiled), "serialize", None)
    if serialize is not None:
        result = serialize(compiled)
        # torch 2.10 returns the bytes; 2.11+ an AOTCompileSaveResult carrying them in .serialized_data
        return bytes(getattr(result, "serialized_data", result))
    # Older releases only save to a path.  # pragma: no cover - every supported torch has serialize()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "artifact.bin"
        compiled.save_compiled_function(str(path))
        return path.read_bytes()


def load(
    payload: bytes,
    *,
    is_module: bool,
    target: Any,
    rechecker: guard_fates.Rechecker | None = None,
) -> LoadedFunction:
    """Deserialize verified bytes into a callable (the bytes must come from artifact.decode).

    ``rechecker`` holds the header's re-checks (loader.check_header parsed them): they run at each call of the
    returned function. The process is ready for torch's loader: the load path ran ``loader.prepare_load`` (the
    install memo, the load's forward fixes); ``check_loadable`` runs where :func:`compile_target` applied them all.
    """
    return loaded(deserialize(payload, is_module=is_module, target=target), rechecker)


def deserialize(payload: bytes, *, is_module: bool, target: Any) -> Any:
    """Torch's own load of verified bytes: the function ``load_compiled_function`` returns, bound to a function
    target's closure (``target`` is not used for a module: its ``f_globals`` are torchkiln's entry module's)."""
    import torch.compiler

    f_globals = loader_globals(target, is_module)
    # Kernels load in this process (compile_threads); a restored bundle's settings are applied around this call by
    # the load path (loader.py, kernels.loading), while check_loadable loads with the compiling process's own.
    with inductor_cache.loading(bundle_settings=False):
        function = torch.compiler.load_compiled_function(io.BytesIO(payload), f_globals=f_globals)
    if not is_module:
        bind_to_callers_closure(function, unwrap(target))
    return function


def loaded(function: Any, rechecker: guard_fates.Rechecker | None) -> LoadedFunction:
    """A deserialized function as torchkiln calls it. The re-checks on module globals ran before anything was
    unpickled (loader.check_header); all of them run again at each call (LoadedFunction.guard_check)."""
    return LoadedFunction(function, loaded=True, rechecker=rechecker or guard_fates.Rechecker(()))


def check_loadable(payload: bytes, *, is_module: bool, target: Any) -> str | None:
    """Deserialize ``payload`` afresh in this process, as a hit would: ``None`` if it loads, else torch's reason.

    What it proves: torch's loader (``load_compiled_function``, through ``load`` above) accepts these exact bytes:
    they unpickle, the saved system info is compatible, the runtime environment and bytecode are rebuilt, the
    guard state unpickles and a guard manager is built from it. That is where a fresh process fails when the saved
    guard state is broken (``empty_strided(): argument 'dtype' must be torch.dtype, not _Missing``).

    What it does not prove: that *another* process loads them. This one still has every module, class, global and
    Dynamo-installed name of the compile in memory, so an artifact that names something only this process has (a
    ``Missing required external references`` error, a class defined in ``__main__``) passes here and fails there;
    kernels come from this process's Inductor cache, not from the artifact's bundle; the loaded function is neither
    called nor guard-checked, so it says nothing about results. The forward fixes and the separate-process tests
    (tests/compat/) cover those.
    """
    try:
        load(payload, is_module=is_module, target=target)
    except Exception as exc:  # noqa: BLE001 - the reason is the result: the caller reports it and does not publish
        return exception_reason(exc)
    return None
