"""The imports a hit makes, made ahead of it, in a designed order: what ``torchkiln.preload()`` runs on its thread.

A hit spends most of its ``load`` importing torch's compiler stack: ``torch._dynamo`` (which drags in sympy,
networkx, ``torch.fx`` and ``torch.distributed``), ``torch._inductor`` and the modules torch's loader and the
generated output code name. Importing them does not need the model, so ``preload`` imports them on one background
thread while the program builds the model and reads its weights (preloader.py holds the interpreter's import lock
around :func:`warm_imports`, so no module is ever imported by two threads at once).

The order is the hit's own (``benchmarks/profile_hit.py``, torch 2.11 and 2.13): Dynamo's package first (it
imports most of ``torch._inductor.config``/``utils`` on the way), then Inductor's, then what
``load_compiled_function`` and AOTAutograd's cache entry reach (``aot_compile``, ``package``, ``autograd_cache``,
``output_code``, ``codecache``), then what every generated output module imports at its top (``async_compile``,
``select_algorithm``: lowering, the scheduler; ``graph``), then per device: for a CPU artifact the C++ builder and
``torch.utils.cpp_extension`` (its kernels' cache keys are compile commands), for a GPU artifact Triton and
Inductor's Triton runtime (what a kernel's source imports). Anything a particular artifact imports beyond these is
imported by the load itself, on the caller's thread, after preload has finished. A name a torch release lacks is
skipped (recorded in ``WarmReport.missing``), never an error: the load imports what it needs either way.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import time

from torchkiln.inductor_cache.template_memo import memoize_templates

__all__ = ["CPU_IMPORTS", "GPU_IMPORTS", "HIT_IMPORTS", "WarmReport", "warm_imports"]

#: Every hit, in this order.
HIT_IMPORTS: tuple[str, ...] = (
    "torch._dynamo",
    "torch._inductor",
    "torch._inductor.config",
    "torch._functorch.config",
    "torch._dynamo.aot_compile",
    "torch._dynamo.package",
    "torch._inductor.codecache",
    "torch._inductor.output_code",
    "torch._functorch._aot_autograd.autograd_cache",
    "torch._inductor.runtime.cache_dir_utils",
    "torch._inductor.async_compile",
    "torch._inductor.select_algorithm",
    "torch._inductor.cpu_vec_isa",
    "torch._inductor.codegen.memory_planning",
    "torch._inductor.hooks",
    "torch._inductor.graph",
    "torch._inductor.runtime.compile_tasks",
    "torch._functorch._aot_autograd.subclass_codegen",
    "torch.fx.experimental.validator",
)
#: Inductor's template memo is put in place right after this import (codegen.common is loaded by then) and before
#: ``select_algorithm``'s, whose kernel modules build their Jinja templates at import (template_memo.py).
_TEMPLATES_MEMOIZED_AFTER = "torch._inductor.codecache"
#: A CPU hit also builds C++ compile commands (its kernels' cache keys) and probes the CPU's vector ISA.
CPU_IMPORTS: tuple[str, ...] = (
    "torch._inductor.cpp_builder",
    "torch.utils.cpp_extension",  # imports setuptools (~0.1 s)
)
#: A GPU hit also runs Triton kernels.
GPU_IMPORTS: tuple[str, ...] = (
    "triton",
    "triton.language",
    "torch._inductor.runtime.triton_compat",
    "torch._inductor.runtime.hints",
    "torch._inductor.runtime.triton_helpers",
    "torch._inductor.runtime.triton_heuristics",
    "torch._inductor.runtime.static_triton_launcher",
)


@dataclasses.dataclass(frozen=True)
class WarmReport:
    """What :func:`warm_imports` did: seconds, modules newly imported, names this torch lacks, failures."""

    seconds: float
    modules: int
    missing: tuple[str, ...]
    failed: tuple[str, ...]  # "name: ExceptionType: message" of imports that raised something else


def warm_imports(device_type: str) -> WarmReport:
    """Import what a hit of an artifact for ``device_type`` imports, in order; never raises.

    Call on one thread at a time, with the interpreter's import lock held (preloader.py does both).
    """
    start = time.perf_counter()
    before = len(sys.modules)
    names = HIT_IMPORTS + (CPU_IMPORTS if device_type == "cpu" else GPU_IMPORTS)
    missing: list[str] = []
    failed: list[str] = []
    for name in names:
        try:
            importlib.import_module(name)
            if name == _TEMPLATES_MEMOIZED_AFTER:
                memoize_templates()
        except ModuleNotFoundError as exc:
            # this torch (or this install: no triton) has no such module; the load will not need it
            missing.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the load imports again on its own thread and reports it there
            failed.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
    return WarmReport(time.perf_counter() - start, len(sys.modules) - before, tuple(missing), tuple(failed))
