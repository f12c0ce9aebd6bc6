"""What a call asks for: the cache key and the fingerprint ``torchkiln.compile`` derives from its arguments.

One derivation for ``torchkiln.compile``, ``torchkiln explain`` and tools, so that explain's key is the key the
next call looks up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torchkiln import cache_key, modes, targets
from torchkiln.fingerprint import Fingerprint

__all__ = ["request_fingerprint", "request_key", "request_key_and_fingerprint"]


def _device_type(target: Any, is_module: bool, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    import torch

    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return str(value.device.type)
    if is_module:
        for tensor in target.parameters():
            return str(tensor.device.type)
    return "cpu"


def request_key_and_fingerprint(
    target: Any,
    *,
    is_module: bool,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    name: str | None,
    dynamic: bool,
    backend: str,
    options: Mapping[str, Any],
) -> tuple[cache_key.CacheKey, Fingerprint]:
    fingerprint = Fingerprint.current(_device_type(target, is_module, args, kwargs))
    key = cache_key.build(
        target,
        tuple(args),
        kwargs,
        options={"backend": backend, **options},
        fingerprint=fingerprint,
        dynamic=dynamic,
        name=name,
    )
    return key, fingerprint


def request_key(
    target: Any,
    example_inputs: Any,
    example_kwargs: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    dynamic: bool = False,
    backend: str = "inductor",
    mode: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> cache_key.CacheKey:
    """The key ``torchkiln.compile`` looks up for these arguments (for ``torchkiln explain`` and tools)."""
    is_module = targets.validate(target)
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    key, _ = request_key_and_fingerprint(
        target,
        is_module=is_module,
        args=args,
        kwargs=dict(example_kwargs or {}),
        name=name,
        dynamic=dynamic,
        backend=backend,
        options=key_options(mode, options or {}),
    )
    return key


def key_options(mode: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The compile options a key names (``request_key_and_fingerprint`` adds the backend): the mode's name unless it
    is the default (so default-mode keys are those of earlier torchkiln releases), then the options as given."""
    name = modes.normalize(mode)
    return {**({"mode": name} if name != modes.DEFAULT else {}), **options}


def request_fingerprint(
    target: Any, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None
) -> Fingerprint:
    """The fingerprint ``torchkiln.compile`` checks artifacts against for these arguments (for ``explain``)."""
    is_module = targets.validate(target)
    args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return Fingerprint.current(_device_type(target, is_module, args, dict(example_kwargs or {})))
