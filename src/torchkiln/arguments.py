"""``torchkiln.compile``'s arguments, checked before any work: the inputs' types, the cache, the options.

A compile takes 25-120 s; an argument it cannot use must fail in milliseconds with what, where and how to fix it,
not after the compile (issue 11: ``example_kwargs=[1]`` was a bare TypeError, a numpy array compiled for 64 s and
then failed with ``Boolean value of Tensor ... ambiguous``). Type errors are ``InvalidArgumentError`` (a
``ConfigError`` and a ``TypeError``). Shapes are not checked here: a shape torch rejects fails within seconds, and
its reason (``compiler.exception_reason``) names the op and the user's line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torchkiln import modes
from torchkiln.errors import InvalidArgumentError

__all__ = ["check_compile_arguments", "example_args"]

_MAX_DEPTH = 16


def example_args(example_inputs: Any) -> tuple[Any, ...] | None:
    """The positional inputs: a tuple or list is the arguments, a single tensor is the one argument, ``None`` means
    lazy (nothing is compiled until the first call, from that call's inputs)."""
    import torch

    if example_inputs is None:
        return None
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Mapping):
        raise InvalidArgumentError(
            "example_inputs is a dict",
            where="example_inputs",
            fix="pass keyword inputs as example_kwargs={...} and the positional ones (or ()) as example_inputs",
        )
    raise InvalidArgumentError(
        f"example_inputs is a {type(example_inputs).__name__}, not a tuple of inputs or a tensor",
        where="example_inputs",
        fix="pass the positional inputs of one call as a tuple, e.g. (x,) or (input_ids, attention_mask)",
    )


def _check_value(value: Any, where: str, depth: int = 0) -> None:
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("ndarray", "matrix"):
        raise InvalidArgumentError(
            f"{where} is a numpy array; torch.compile traces tensors",
            where=where,
            fix="convert it with torch.from_numpy(array) (and .to(device) where the model lives)",
        )
    if depth >= _MAX_DEPTH:
        return
    if isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _check_value(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_value(item, f"{where}[{key!r}]", depth + 1)


def check_compile_arguments(
    args: tuple[Any, ...] | None,
    *,
    example_kwargs: Any,
    cache: Any,
    name: Any,
    dynamic: Any,
    backend: Any,
    mode: Any = None,
    options: Any,
    fullgraph: Any = True,
    strict: Any,
) -> dict[str, Any] | None:
    """Raise ``InvalidArgumentError`` for an argument ``compile`` cannot use; return the keyword inputs (``None``
    for a lazy compile: ``args`` is None)."""
    from torchkiln.store import Store

    for i, arg in enumerate(args or ()):
        _check_value(arg, f"example_inputs[{i}]")
    if args is None and example_kwargs is not None:
        raise InvalidArgumentError(
            "example_kwargs without example_inputs",
            where="example_kwargs",
            fix="pass example_inputs=() for a call that has keyword inputs only, or neither for a lazy compile "
            "(it compiles from the first call's inputs)",
        )
    if example_kwargs is None:
        kwargs: dict[str, Any] = {}
    elif not isinstance(example_kwargs, Mapping) or not all(isinstance(k, str) for k in example_kwargs):
        raise InvalidArgumentError(
            f"example_kwargs is a {type(example_kwargs).__name__}, not a dict of keyword inputs",
            where="example_kwargs",
            fix="pass keyword inputs as a dict, e.g. example_kwargs={'attention_mask': mask}",
        )
    else:
        kwargs = dict(example_kwargs)
    for key, value in kwargs.items():
        _check_value(value, f"example_kwargs[{key!r}]")
    if cache is not None and not isinstance(cache, str | os.PathLike | Store):
        raise InvalidArgumentError(
            f"cache is a {type(cache).__name__}",
            where="cache",
            fix="pass a directory, a URL (file://, s3://BUCKET/PREFIX, memory://NAME) or a torchkiln Store",
        )
    _check_type("name", name, str, "a string (the key's readable prefix) or None", optional=True)
    _check_type(
        "dynamic",
        dynamic,
        bool,
        "None (automatic: static first, dynamic once a size changes), True or False",
        optional=True,
    )
    _check_type("strict", strict, bool, "True or False")
    _check_type("fullgraph", fullgraph, bool, "True")
    if fullgraph is False:
        raise InvalidArgumentError(
            "fullgraph=False: torchkiln stores whole graphs only",
            where="fullgraph",
            fix="leave fullgraph at True (a graph break is then a CompileError naming its line), or use torch.compile "
            "itself for a model with graph breaks",
        )
    if not isinstance(backend, str):
        raise InvalidArgumentError(
            f"backend must be a registered backend name, not {type(backend).__name__}",
            where="backend",
            fix='use backend="inductor" (a callable backend cannot be named in a cache key)',
        )
    _check_mode(mode, backend)
    if options is not None and not isinstance(options, Mapping):
        raise InvalidArgumentError(
            f"options is a {type(options).__name__}, not a dict", where="options", fix="pass a dict or None"
        )
    if options and mode is not None:
        # torch.compile refuses both (RuntimeError); the same request must mean the same thing here.
        raise InvalidArgumentError(
            f"both mode={mode!r} and options are given",
            where="mode, options",
            fix="pass one: a mode, or options (torch._inductor.list_mode_options() lists what each mode sets)",
        )
    if options and any(not isinstance(k, str) for k in options):
        raise InvalidArgumentError("an options key is not a string", where="options", fix="use Inductor option names")
    return None if args is None else kwargs


def _check_mode(mode: Any, backend: str) -> None:
    if mode is None:
        return
    if not isinstance(mode, str) or mode not in modes.MODES:
        raise InvalidArgumentError(
            f"mode is {mode!r}",
            where="mode",
            fix="pass None or one of " + ", ".join(repr(m) for m in modes.MODES),
        )
    if backend != "inductor" and mode != modes.DEFAULT:
        raise InvalidArgumentError(
            f"mode={mode!r} with backend={backend!r}",
            where="mode",
            fix='modes are Inductor settings: use backend="inductor", or leave mode at None',
        )


def _check_type(what: str, value: Any, kind: type, wanted: str, *, optional: bool = False) -> None:
    if (value is None and optional) or isinstance(value, kind):
        return
    raise InvalidArgumentError(f"{what} is {value!r}", where=what, fix=f"pass {wanted}")
