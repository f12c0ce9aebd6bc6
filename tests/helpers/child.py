"""The fresh-process side of every round-trip test: compile (or load) through ``torchkiln.compile``, report JSON.

Run as ``python tests/helpers/child.py CONFIG_JSON``. The config names importable objects as ``module:attr``:

- ``target``: a factory returning the target (an nn.Module), called with ``target_kwargs``, or with
  ``"function": true`` the function itself;
- ``inputs``: a function returning the positional example inputs, or ``{"args": (...), "kwargs": {...}}``;
  ``inputs_kwargs`` are passed to it;
- ``cache``, ``strict``, ``dynamic``, ``name``, ``mode``: as for ``torchkiln.compile``; ``signing_key``: the
  ``TORCHKILN_SIGNING_KEY`` to set (unset when absent);
- ``calls``: a list of ``inputs_kwargs``, each a further call of the compiled module (compared with eager);
- ``compiles``: a list of overrides of all the above, one ``torchkiln.compile`` each, in order (default: one
  with no overrides), so that one process (one torch import) can serve several checks;
- ``repeat_calls`` / ``repeat_loads``: call the last module / call ``torchkiln.compile`` N more times and report
  open file descriptors and RSS before and after.

The last stdout line is ``TKRESULT <json>``: per compile ``hit``, ``key``, ``timings`` (every phase, 0.0 for
those that did not run), ``artifact_bytes``, ``specializations``, ``max_diff`` against eager in this process, the
``TorchkilnWarning`` messages, the error (type name, its class hierarchy, message) if one was raised, and its
``calls``. Nothing else is printed (stdout or stderr) except what torch prints, so tests can grep stderr for error
lines.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import torchkiln


def _resolve(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in an output (tensor, tuple/list, dict or a transformers ModelOutput), in a fixed order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "to_tuple"):
        return _tensors(value.to_tuple())
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for k in sorted(value) for t in _tensors(value[k])]
    return []


def _max_diff(got: Any, want: Any) -> float:
    got_t, want_t = _tensors(got), _tensors(want)
    if not want_t or len(got_t) != len(want_t):
        return float("inf")
    worst = 0.0
    for g, w in zip(got_t, want_t, strict=True):
        if g.shape != w.shape or g.dtype != w.dtype:
            return float("inf")
        worst = max(worst, float((g.double() - w.double()).abs().max()) if w.numel() else 0.0)
    return worst


def _checksum(value: Any) -> float:
    found = _tensors(value)
    return float(found[0].double().sum()) if found else 0.0


def _inputs(config: dict[str, Any], inputs_kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    made = _resolve(config["inputs"])(**inputs_kwargs)
    if isinstance(made, dict):
        return tuple(made["args"]), dict(made.get("kwargs") or {})
    return (tuple(made) if isinstance(made, (tuple, list)) else (made,)), {}


def _error(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "mro": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}


def _fds() -> int:
    return sum(1 for _ in Path("/proc/self/fd").iterdir())


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _recorded_warnings(out: list[str]) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    out.extend(str(w.message) for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning))


def _compile_once(target: Any, config: dict[str, Any], reference: Any) -> tuple[Any, dict[str, Any]]:
    args, kwargs = _inputs(config, config.get("inputs_kwargs") or {})
    record: dict[str, Any] = {"warnings": [], "error": None}
    module = None
    start = time.perf_counter()
    with _recorded_warnings(record["warnings"]):
        try:
            module = torchkiln.compile(
                target,
                args,
                example_kwargs=kwargs,
                cache=config.get("cache"),
                name=config.get("name"),
                dynamic=config.get("dynamic", False),
                strict=bool(config.get("strict", False)),
                mode=config.get("mode"),
            )
            output = module(*args, **kwargs)
        except Exception as exc:
            record["error"] = _error(exc)
    record["seconds"] = time.perf_counter() - start
    if module is not None:
        record.update(
            hit=module.hit,
            key=module.key,
            timings={k: round(v, 4) for k, v in module.timings.items()},
            artifact_bytes=module.artifact_bytes,
            specializations=[s.key for s in module.specializations],
            max_diff=_max_diff(output, reference),
            checksum=_checksum(output),
            created_at=module.header.created_at if module.header else None,
        )
    return module, record


def _call(module: Any, config: dict[str, Any], target: Any, inputs_kwargs: dict[str, Any]) -> dict[str, Any]:
    args, kwargs = _inputs(config, inputs_kwargs)
    call: dict[str, Any] = {"inputs_kwargs": inputs_kwargs, "warnings": [], "error": None}
    with _recorded_warnings(call["warnings"]):
        try:
            output = module(*args, **kwargs)
            call["max_diff"] = _max_diff(output, target(*args, **kwargs))
            call["shape"] = list(_tensors(output)[0].shape)
            call["dtype"] = str(_tensors(output)[0].dtype)
        except Exception as exc:
            call["error"] = _error(exc)
    call.update(key=module.key, hit=module.hit, specializations=[s.key for s in module.specializations])
    return call


def _repeat(module: Any, config: dict[str, Any], target: Any) -> dict[str, Any]:
    args, kwargs = _inputs(config, config.get("inputs_kwargs") or {})
    report: dict[str, Any] = {}
    if config.get("repeat_calls"):
        for _ in range(20):  # warm up allocator pools and lazy initialisation before the baseline
            module(*args, **kwargs)
        before = (_fds(), _rss_kib())
        for _ in range(int(config["repeat_calls"])):
            module(*args, **kwargs)
        report["calls"] = {"fds": [before[0], _fds()], "rss_kib": [before[1], _rss_kib()]}
    if config.get("repeat_loads"):
        cache = config.get("cache")
        hits = 0
        for i in range(int(config["repeat_loads"]) + 5):
            if i == 5:  # the first loads warm torch's own lazy state; measure from here
                before = (_fds(), _rss_kib())
            loaded = torchkiln.compile(target, args, example_kwargs=kwargs, cache=cache)
            hits += bool(loaded.hit)
        report["loads"] = {"fds": [before[0], _fds()], "rss_kib": [before[1], _rss_kib()], "hits": hits}
    return report


def _target(config: dict[str, Any]) -> Any:
    target = _resolve(config["target"])
    return target if config.get("function") else target(**(config.get("target_kwargs") or {}))


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    torch.set_grad_enabled(bool(config.get("grad", False)))
    result: dict[str, Any] = {"compiles": [], "torch": torch.__version__}
    module = target = None
    merged: dict[str, Any] = config
    for override in config.get("compiles") or [{}]:
        merged = {**config, **override}
        # The signing key is read from the environment on every compile, so one process can try several.
        if merged.get("signing_key") is None:
            os.environ.pop("TORCHKILN_SIGNING_KEY", None)
        else:
            os.environ["TORCHKILN_SIGNING_KEY"] = merged["signing_key"]
        target = _target(merged)
        args, kwargs = _inputs(merged, merged.get("inputs_kwargs") or {})
        module, record = _compile_once(target, merged, target(*args, **kwargs))
        if module is not None:
            record["calls"] = [_call(module, merged, target, kw) for kw in merged.get("calls") or []]
        result["compiles"].append(record)
    if module is not None:
        result["repeat"] = _repeat(module, merged, target)
    result["gc_enabled"] = gc.isenabled()  # the load pauses the collector (gc_pause.py) and must resume it
    sys.stdout.write("TKRESULT " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
