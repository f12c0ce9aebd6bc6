"""``torchkiln.install()``: ``torch.compile(...)`` calls made anywhere in the process are served by torchkiln when it
can serve them, and handed to torch's own ``torch.compile``, unchanged, when it cannot.

Served: ``fullgraph=True``, the ``inductor`` backend (torch's default), a mode of ``modes.MODES`` (or options
instead), nothing else torchkiln does not know (``recompile_limit``, ``shapes_spec``, ...), and a target
``targets.validate`` accepts (an nn.Module, a module-level function, a bound method of a module). The decorator
forms (``@torch.compile``, ``@torch.compile(fullgraph=True)``) are the same calls. Everything else, including every
``fullgraph=False`` call (torch.compile's default: torchkiln stores whole graphs only), goes to torch as it was
made. Each decision is logged at INFO on ``torchkiln.routing`` (``TORCHKILN_LOG=info``), with the reason.

A served call returns what ``torchkiln.compile(target, dynamic=..., mode=..., options=...)`` returns (lazy: it
compiles or loads on the first call). Code that bound ``torch.compile`` to another name before ``install()``
(``from torch import compile``) keeps torch's: install first, or start the program with ``torchkiln run``
(launch.py). ``uninstall()`` puts torch's function back; what was compiled meanwhile keeps working. torchkiln's own
compiles always use torch's function (``compiler.torch_compile``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from torchkiln import modes, settings, targets
from torchkiln.compiler import ORIGINAL_ATTRIBUTE
from torchkiln.errors import InvalidArgumentError, InvalidTargetError

__all__ = ["install", "installed", "uninstall"]

log = logging.getLogger("torchkiln.routing")

#: torch.compile's parameters that torchkiln does not serve, with the value that means "not used".
_UNSERVED_DEFAULTS: dict[str, Any] = {"recompile_limit": None, "isolate_recompiles": False, "shapes_spec": None}
#: options keys torch.compile pops for itself (hooks, AOTInductor), not Inductor settings.
_TORCH_OPTIONS = frozenset({"guard_filter_fn", "use_aoti"})

_routing: dict[str, Any] = {"cache": None, "strict": False}


def install(*, cache: str | os.PathLike[str] | Any = None, strict: bool = False) -> None:
    """Route ``torch.compile`` through torchkiln (idempotent; a second call only changes ``cache`` and ``strict``).

    ``cache`` and ``strict`` are ``torchkiln.compile``'s, for every call served.
    """
    import torch

    config = settings.current()
    settings.configure_logging(config.log_level)
    _routing.update(cache=cache, strict=strict)
    if installed():
        return
    torch.compile = _replacement(torch.compile)
    log.info("installed: torch.compile calls are served by torchkiln where it can (cache=%s)", cache or config.cache)


def uninstall() -> bool:
    """Give ``torch.compile`` back to torch; False when torchkiln's replacement was not installed (or was replaced
    since by someone else, who is left alone)."""
    torch = sys.modules.get("torch")
    current = getattr(torch, "compile", None)
    original = getattr(current, ORIGINAL_ATTRIBUTE, None)
    if torch is None or original is None:
        return False
    torch.compile = original  # type: ignore[attr-defined]
    log.info("uninstalled: torch.compile is torch's again")
    return True


def installed() -> bool:
    """Whether ``torch.compile`` is torchkiln's replacement now."""
    torch = sys.modules.get("torch")
    return torch is not None and getattr(getattr(torch, "compile", None), ORIGINAL_ATTRIBUTE, None) is not None


def _replacement(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def compile(model: Any = None, **kwargs: Any) -> Any:
        if model is None:  # the decorator form: @torch.compile(...) with arguments
            return lambda fn: compile(fn, **kwargs) if fn is not None else original(fn, **kwargs)
        return _route(original, model, kwargs)

    setattr(compile, ORIGINAL_ATTRIBUTE, original)
    return compile


def _what(model: Any) -> str:
    function = targets.unwrap(model)
    return targets.qualname(function if inspect.isfunction(function) else type(model))


def _route(original: Callable[..., Any], model: Any, kwargs: Mapping[str, Any]) -> Any:
    from torchkiln import api, wrappers

    if isinstance(model, wrappers.CompiledModule | wrappers.CompiledFunction):
        log.info("torch.compile(%s): already compiled by torchkiln, returned as it is", _what(model))
        return model
    reason = _why_not(model, kwargs)
    if reason is None:
        try:
            compiled = api.compile(
                model,
                None,
                cache=_routing["cache"],
                name=kwargs.get("name"),
                dynamic=kwargs.get("dynamic"),
                mode=kwargs.get("mode"),
                options=kwargs.get("options"),
                strict=_routing["strict"],
            )
        except (InvalidArgumentError, InvalidTargetError) as exc:
            reason = exc.what
        else:
            log.info(
                "torch.compile(%s) -> torchkiln (dynamic=%s, mode=%s)",
                _what(model),
                kwargs.get("dynamic"),
                modes.normalize(kwargs.get("mode")),
            )
            return compiled
    log.info("torch.compile(%s) -> torch: %s", _what(model), reason)
    return original(model, **kwargs)


def _why_not(model: Any, kwargs: Mapping[str, Any]) -> str | None:  # noqa: PLR0911 - one return per reason
    """Why torchkiln does not serve this call (None: it does)."""
    import torch

    if kwargs.get("disable"):
        return "disable=True"
    if torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return "called while torch is tracing (torch.compile is a no-op there)"
    if kwargs.get("fullgraph") is not True:
        return "fullgraph=False: torchkiln stores whole graphs only (pass fullgraph=True to have it cached)"
    backend = kwargs.get("backend")
    if backend not in (None, "inductor"):
        return f"backend={backend!r}: torchkiln serves the inductor backend"
    mode = kwargs.get("mode")
    if mode is not None and mode not in modes.MODES:
        return f"mode={mode!r} is not one torchkiln serves ({', '.join(modes.MODES)})"
    options = kwargs.get("options")
    if options is not None and not isinstance(options, Mapping):
        return f"options is a {type(options).__name__}"
    if options and mode is not None:
        return "both mode and options (torch refuses that call itself)"
    hooks = sorted(_TORCH_OPTIONS & set(options or ()))
    if hooks:
        return f"options {hooks} are torch.compile's own hooks"
    if kwargs.get("dynamic") not in (None, True, False):
        return f"dynamic={kwargs.get('dynamic')!r}"
    unknown = sorted(k for k in kwargs if k not in ("fullgraph", "backend", "mode", "options", "dynamic", "name"))
    used = [k for k in unknown if k not in _UNSERVED_DEFAULTS or kwargs[k] != _UNSERVED_DEFAULTS[k]]
    if used:
        return f"{used[0]}={kwargs[used[0]]!r} is not a setting torchkiln serves"
    if kwargs.get("name") is not None and not isinstance(kwargs.get("name"), str):
        return "name is not a string"
    if isinstance(model, torch.nn.Module) and hasattr(model, "dynamo_ctx") and hasattr(model, "_orig_mod"):
        return "the model is already a torch OptimizedModule"
    return None
