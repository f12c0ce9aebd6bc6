"""``torchkiln.compile``: torch.compile's call, with a cache that survives the process.

``torchkiln.compile(model)`` returns at once and compiles (or loads) on the first call, from that call's inputs
(lazy, like ``torch.compile``); ``torchkiln.compile(model, example_inputs)`` does it before returning (eager: a
prewarm, the CLI). An ``nn.Module`` gives a ``CompiledModule`` (an nn.Module like torch's ``OptimizedModule``), a
function or a bound method a ``CompiledFunction`` (wrappers.py). Which specialization serves a call, and the
hit / miss / fallback / strict policy, are specializer.py's.

torch.compile's parameters mean what they mean in torch: ``mode`` (its Inductor options, from torch's own table;
in the key), ``dynamic`` (None: automatic, specializer.py says how that maps onto keys), ``backend`` (a name: a
callable backend cannot be named in a key, ``InvalidArgumentError``, a TypeError), ``options``; ``fullgraph`` must
stay True (torchkiln stores whole graphs; ``torchkiln.install()`` hands ``fullgraph=False`` calls to torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, overload

from torchkiln import arguments, inductor_options, settings, targets
from torchkiln.compat import check_supported
from torchkiln.errors import StoreError, warn
from torchkiln.request import request_fingerprint, request_key
from torchkiln.specialization import TIMING_KEYS, Recipe
from torchkiln.specializer import Specializer
from torchkiln.store import Store, open_store

if TYPE_CHECKING:
    import torch

    from torchkiln.wrappers import CompiledFunction, CompiledModule

__all__ = [
    "TIMING_KEYS",
    "CompiledFunction",
    "CompiledModule",
    "compile",
    "request_fingerprint",
    "request_key",
]


def __getattr__(name: str) -> Any:
    # The wrappers subclass nn.Module, so they import torch: only when asked for (``import torchkiln`` stays light).
    if name in ("CompiledModule", "CompiledFunction"):
        from torchkiln import wrappers

        return getattr(wrappers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@overload
def compile(  # type: ignore[overload-overlap]  # a module is callable too: the first match wins
    target: torch.nn.Module,
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | Store | None = None,
    name: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
    fullgraph: bool = True,
    strict: bool = False,
) -> CompiledModule: ...


@overload
def compile(
    target: Callable[..., Any],
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | Store | None = None,
    name: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
    fullgraph: bool = True,
    strict: bool = False,
) -> CompiledFunction: ...


def compile(
    target: Any,
    example_inputs: Any = None,
    *,
    example_kwargs: Mapping[str, Any] | None = None,
    cache: str | os.PathLike[str] | Store | None = None,
    name: str | None = None,
    dynamic: bool | None = None,
    backend: str = "inductor",
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
    fullgraph: bool = True,
    strict: bool = False,
) -> Any:
    """Compile ``target`` (an nn.Module, a function, nested or not, or a bound method of a module) once; later
    processes load the artifact.

    ``example_inputs``: None (the default) compiles or loads on the first call, from its inputs; a tuple of
    positional arguments (a single tensor is accepted too), with ``example_kwargs``, does it now. ``cache`` is a
    path or URL (``/dir``, ``file://``, ``s3://bucket/prefix``, ``memory://``), else ``$TORCHKILN_CACHE``, else
    the user cache dir. ``dynamic``, ``backend``, ``mode``, ``options`` are torch.compile's. ``strict`` (or
    ``TORCHKILN_STRICT=1``) raises instead of falling back to a compile.

    Every setting is checked before any work: a bad ``TORCHKILN_*`` variable, cache URL or argument is a
    ``ConfigError`` (``InvalidArgumentError``, also a ``TypeError``, for an argument of the wrong type).
    """
    from torchkiln import preloader

    preloader.join_before_compile()  # a running torchkiln.preload() finishes its imports before anything here runs
    config = settings.current()
    settings.configure_logging(config.log_level)
    check_supported()
    is_module = targets.validate(target)
    args = arguments.example_args(example_inputs)
    kwargs = arguments.check_compile_arguments(
        args,
        example_kwargs=example_kwargs,
        cache=cache,
        name=name,
        dynamic=dynamic,
        backend=backend,
        mode=mode,
        options=options,
        fullgraph=fullgraph,
        strict=strict,
    )
    if backend == "inductor" and (options or mode not in (None, "default")):
        # an unknown option fails now, not at the first call
        inductor_options.inductor_options(mode, options, dynamic=bool(dynamic))
    store = _open(config.cache if cache is None else cache, strict or config.strict)
    from torchkiln import methods, wrappers

    # A bound method of a module compiles through the module entry (methods.py): its owner stays an argument.
    method = None if is_module else methods.method_target(target)
    if method is not None and name is None:
        name = f"{type(method.owner).__name__}.{getattr(method.function, '__name__', 'method')}"
    recipe = Recipe(
        cache=cache,
        name=name,
        dynamic=dynamic,
        backend=backend,
        mode=mode,
        options=dict(options or {}),
        strict=strict,
    )
    specializer = Specializer(
        target if method is None else method,
        is_module=is_module or method is not None,
        store=store,
        recipe=recipe,
        config=config,
    )
    specializer.rebuild = rebuild
    wrapper: Any = (
        wrappers.CompiledModule(target, specializer) if is_module else wrappers.CompiledFunction(target, specializer)
    )
    if args is not None:
        assert kwargs is not None  # check_compile_arguments returns the keyword inputs of an eager compile
        specializer.resolve(args, kwargs)
    return wrapper


def _open(cache: str | os.PathLike[str] | Store | None, strict: bool) -> Store | None:
    if isinstance(cache, Store):
        return cache
    try:
        return open_store(cache)
    except StoreError as exc:
        if strict:
            raise
        warn(f"torchkiln: cache unavailable, compiling without it: {exc}")
        return None


def rebuild(target: Any, recipe: Recipe) -> Any:
    """A lazy ``torchkiln.compile`` of ``target`` with ``recipe``'s arguments (copies, pickles, per-instance
    methods). Lives here, not in wrappers.py, so that wrappers never import api (no import circle): a wrapper
    reaches it through its specializer's ``rebuild`` attribute, and a pickle names it ``torchkiln.api.rebuild``."""
    return compile(
        target,
        None,
        cache=recipe.cache,
        name=recipe.name,
        dynamic=recipe.dynamic,
        backend=recipe.backend,
        mode=recipe.mode,
        options=dict(recipe.options) or None,
        strict=recipe.strict,
    )
