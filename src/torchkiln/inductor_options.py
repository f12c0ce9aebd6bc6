"""The Inductor options a ``torch.compile(mode=..., options=...)`` call compiles with, as torchkiln compiles it.

One rule in one place: the mode's table, then the caller's options, checked the way torch checks them, then what
torchkiln adds so that an artifact carries what its compile did (a compile for a Triton device tunes its kernels'
launch configs at compile time, see below). The key names the mode and the options as given
(``request.key_options``), not this merged table. It reads ``torch._inductor.config`` (allowed in
tools/check_forbidden_imports.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["AUTOTUNE_AT_COMPILE_TIME", "inductor_options"]


#: The Inductor option that moves a Triton kernel's launch-config benchmarking from its first call to the compile.
AUTOTUNE_AT_COMPILE_TIME = "triton.autotune_at_compile_time"


def inductor_options(
    mode: str | None, options: Mapping[str, Any] | None, *, dynamic: bool, triton: bool = False
) -> dict[str, Any]:
    """The Inductor options a ``torch.compile(mode=mode, options=options)`` call compiles with, merged the way torch
    merges them (``_TorchCompileInductorWrapper.apply_mode`` then ``apply_options``): the mode's table
    (``torch._inductor.list_mode_options(mode, dynamic)``), then the options, ``-`` read as ``_``.

    ``triton``: the graph runs Triton kernels (a CUDA or XPU compile); their launch configs are then tuned at
    compile time. Raises ``InvalidArgumentError`` for an option Inductor does not know or a value of the wrong type,
    the checks torch makes (as a RuntimeError) when it builds its backend.
    """
    from torch._inductor import config, list_mode_options

    from torchkiln.errors import InvalidArgumentError

    merged: dict[str, Any] = {}
    if mode and mode != "default":
        merged.update(list_mode_options(mode, dynamic))
    known = config.get_config_copy()
    for key, value in (options or {}).items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = sorted(k for k in known if name.split(".")[-1] in k)[:5]
            raise InvalidArgumentError(
                f"options[{key!r}] is not an Inductor option",
                where="options",
                fix="use a name from torch._inductor.config" + (f" (close: {', '.join(close)})" if close else ""),
            )
        kind = config.get_type(name)  # type: ignore[attr-defined]
        if isinstance(kind, type) and not isinstance(value, kind):
            raise InvalidArgumentError(
                f"options[{key!r}] is a {type(value).__name__}, Inductor expects a {kind.__name__}",
                where="options",
                fix=f"pass a {kind.__name__}",
            )
        merged[name] = value
    if triton and AUTOTUNE_AT_COMPILE_TIME not in merged:
        # Every mode leaves part of a Triton kernel's tuning to its first launch: a kernel with several launch configs
        # (any 1-D pointwise kernel, ``autotune_pointwise`` is on by default; every kernel under ``max_autotune``)
        # benchmarks them then, and coordinate descent refines the winner, writing a ``.best_config`` file beside the
        # kernel in the Inductor cache. In the compiling process that happens after the artifact is recorded, so
        # every hit would benchmark again (H200: a ``reduce-overhead`` MLP hit ran ``benchmark_all_configs`` once).
        # Tuning at compile time (Inductor runs the kernels on example values, the path AOTInductor uses) writes
        # those files inside the recorded cache, and the artifact carries them (kernels/record.py). The pick is the
        # one first-launch tuning would make, at another time. An explicit ``triton.autotune_at_compile_time`` from
        # the caller still wins.
        merged[AUTOTUNE_AT_COMPILE_TIME] = True
    return merged
