"""Fix ``isa-probe-without-import``: every process that compiles or loads for the CPU spends seconds importing torch.

Symptom (torch 2.11 on Linux, measured here): the first CPU compile or CPU load in a process picks Inductor's
vector ISA (``cpu_vec_isa.valid_vec_isa_list``), which checks each candidate ISA by building a tiny library and
loading it in a child process, and each child runs ``import torch`` first. With the libraries already built:
13.6-15.0 s per process on a 2-core AVX-512 host (three ISAs and their bf16/VNNI/AMX variants), 18.7 s of a 20 s
torch 2.11 CPU hit on an AMX host (``benchmarks/results/cpu211-profile-hit.txt``). No error: only the time, in
every fresh process, compile and hit alike.

Cause: ``VecISA._avx_py_load``, the child's script, imports torch only so that the test library's dependency on
``libtorch_cpu.so`` resolves. Upstream replaced that on Linux with a cold ``dlopen`` (pytorch#183515, torch 2.13:
torch's lib dir on the child's ``LD_LIBRARY_PATH``), and retries after ``import torch`` when the cold load fails
(pytorch#189900: a wheel whose bundled libraries resolve only once torch is imported).

Fix (``repairs_load``: a process that only loads probes too; the probe reads torch's script, no process, no
compile): on Linux, ``VecISA._avx_py_load`` is replaced by a script that loads this torch's ``libc10.so`` and
``libtorch_cpu.so`` by absolute path (``RTLD_GLOBAL``, so the test library's dependency on them resolves by soname)
and then the test library; if any of that raises ``OSError``, it runs torch's own steps (``import torch``, then the
load). The question asked is unchanged (can this host load a library built with these ISA flags, next to this
torch?), and a host where the light path fails gets torch's own answer. Measured: the same ISAs in 2.65 s instead
of 13.6 s.

Upstream: pytorch#183515 (torch 2.13) and pytorch#189900.
Affected: torch >=2.10.dev0 on Linux, where the script imports torch unconditionally (the probe retires the fix
on 2.13 and on any earlier release that carries the change).
Touches: ``torch._inductor.cpu_vec_isa.VecISA._avx_py_load`` (replaced; torch's kept for ``revert``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix

__all__ = ["FIX", "light_loader_script"]

# ``__lib_path__`` is what torch's check_build replaces with the test library's path. The libraries are loaded by
# absolute path: a library already loaded satisfies a dependency on its soname, without LD_LIBRARY_PATH.
_SCRIPT = """
import ctypes
try:
    for _lib in {preload!r}:
        ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)
    ctypes.CDLL("__lib_path__")
except OSError:
    import torch  # torch's own way (pytorch#189900): whatever loading semantics the wheel relies on
    from ctypes import cdll
    cdll.LoadLibrary("__lib_path__")
"""


def _isa_class() -> Any:
    try:
        from torch._inductor.cpu_vec_isa import VecISA
    except ImportError:
        return None
    if not isinstance(vars(VecISA).get("_avx_py_load"), str) or "__lib_path__" not in VecISA._avx_py_load:
        return None
    return VecISA


def light_loader_script(torch_lib: Path) -> str:
    """The child script that loads a test library next to the torch whose libraries lie in ``torch_lib``."""
    preload = [str(torch_lib / name) for name in ("libc10.so", "libtorch_cpu.so") if (torch_lib / name).is_file()]
    return _SCRIPT.format(preload=preload)


def _torch_lib() -> Path:
    import torch

    return Path(torch.__file__).parent / "lib"


def _probe() -> bool:
    """On Linux: does torch's child script import torch unconditionally (a top-level ``import torch`` line)?"""
    isa = _isa_class()
    if isa is None or not sys.platform.startswith("linux"):
        return False
    return any(line.strip() == "import torch" and not line[:1].isspace() for line in isa._avx_py_load.splitlines())


_patch = ClassPatch(_isa_class, "_avx_py_load")


def _apply() -> None:
    _patch.apply(lambda _torchs: light_loader_script(_torch_lib()))


# Last (90): it changes how Inductor checks the CPU's ISAs, which no other fix touches.
FIX = Fix(
    id="isa-probe-without-import",
    title="Inductor's CPU ISA check loads its test library without importing torch in each child",
    upstream="pytorch#183515 (torch 2.13), pytorch#189900",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in="2.13.0",
    touches=("torch._inductor.cpu_vec_isa.VecISA._avx_py_load",),
    targets_exist=lambda: _isa_class() is not None,
    probe=_probe,
    apply=_apply,
    revert=_patch.revert,
    is_applied=_patch.is_applied,
    order=90,
    repairs_load=True,  # a CPU hit picks the ISA too (and preload picks it on its thread)
)
