"""Fix ``module-globals``: aot_compile does not save the module objects Dynamo installs as globals.

Symptom (torch 2.10 through at least 2.13; not fixed upstream as of 2.14): Dynamo reconstructs some values
outside the graph by loading a module (or a builtin type) through a global it installs under a per-process name,
``___module_<name>_<id>_c<N>`` (``torch._dynamo.codegen.PyCodegen.create_load_python_module`` ->
``OutputGraph.install_global_by_id``). ``get_runtime_env`` does not put those globals into ``used_globals``, so
returning ``range(3)`` from a compiled function, or an entry point in one module calling a model whose forward
returns a dict subclass defined in another (``___module_collections_<id>_c1``), saves but fails to load with
``RuntimeError: Missing required external references: ['___module_range_<id>_c0']``. The name carries ``id()``
of the object in the compiling process, so no ``f_globals`` of a fresh process can supply it.

Fix: after ``get_runtime_env``, every such name that the bytecode loads, that the saved environment lacks and that
the compiling frame's globals hold, is added to ``used_globals`` when its value can be saved *by reference*: a
module (torch's AOTCompilePickler pickles modules by import name) or a class/function reachable as
``module.qualname``. The load then resolves it by that name. Anything else is left missing, so the load fails
loudly (and torchkiln turns that into a recompile) rather than carrying a value it cannot rebuild.

Upstream: not fixed; the closest report is the aot_compile serialization tracking issue (pytorch#160207).
Affected: torch >=2.10.dev0 (no upper bound until upstream fixes it; the probe retires the fix then).
Touches: ``GraphCaptureOutput.get_runtime_env`` (through compat/runtime_env_patch.py).
"""

from __future__ import annotations

import re
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat import runtime_env_patch
from torchkiln.compat.fix import Fix
from torchkiln.compat.references import saveable_by_reference

__all__ = ["FIX", "MODULE_GLOBAL_RE", "saveable_by_reference"]

#: ``OutputGraph.install_global_by_id(prefix="___module_<name>")`` -> ``f"{prefix}_{id(value)}_c{compile_id}"``
MODULE_GLOBAL_RE = re.compile(r"^___module_.+_\d+_c\d+$")

FIX_ID = "module-globals"


def _post_process(capture_output: Any, env: Any) -> None:
    f_globals = capture_output.f_globals
    for ref in env.external_refs:
        if ref in env.used_globals or not MODULE_GLOBAL_RE.match(ref) or ref not in f_globals:
            continue
        value = f_globals[ref]
        if saveable_by_reference(value):
            env.used_globals[ref] = value


def _probe_function(x: Any) -> Any:
    return x + 1, range(3)


def _probe() -> bool:
    import torch

    from torchkiln.compat.probing import unsaved_runtime_refs

    return any(MODULE_GLOBAL_RE.match(ref) for ref in unsaved_runtime_refs(_probe_function, (torch.ones(2),)))


# Third: its post-processor joins builtins-runtime-env's on the shared get_runtime_env wrapper and runs after it
# (runtime_env_patch runs them in the order they were added). The two fill disjoint names, so the order changes
# no result; it is fixed so the wrapper behaves the same in every process.
FIX = Fix(
    id=FIX_ID,
    title="aot_compile saves the ___module_* globals Dynamo installs",
    upstream="not fixed upstream (see pytorch#160207)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=("torch._dynamo.convert_frame.GraphCaptureOutput.get_runtime_env",),
    targets_exist=lambda: runtime_env_patch.target_class() is not None,
    probe=_probe,
    apply=lambda: runtime_env_patch.add(FIX_ID, _post_process),
    revert=lambda: runtime_env_patch.remove(FIX_ID),
    is_applied=lambda: runtime_env_patch.has(FIX_ID),
    order=30,
)
