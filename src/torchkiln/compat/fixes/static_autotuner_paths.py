"""Fix ``static-autotuner-paths``: a loaded Triton kernel looks for its tuning results in the compiler's cache dir.

Symptom (torch 2.11 on an H200, checked there; the code is the same in 2.13): a CUDA artifact compiled with
``mode="max-autotune-no-cudagraphs"`` (coordinate-descent tuning) re-tunes its Triton kernels on the first call of
every fresh process that loads it: GPT-2 (2 layers) ran ``CoordescTuner.autotune`` 7 times on each hit and took
11.7 s to its first output (``benchmarks/results/h200-gpt2-max-autotune-tuning.jsonl``), although the artifact
carries the ``.best_config`` files the compile wrote and the load installs them into this process's Inductor
cache. No error: only the time, and a ``.best_config`` written into a directory of another process.

Cause: a statically launchable kernel is restored from the FX graph's Triton bundle as the pickled
``CachingAutotuner`` of the compiling process (``TritonBundler.load_autotuners``). torch re-points its cubin at
this process's Triton cache (``StaticTritonCompileResult.reload_cubin_path``) but not its ``filename``, the path
of the kernel's source in the *compiling* process's Inductor cache: ``recheck_autotune_cache`` reads the
``.best_config`` beside that path, and the autotune cache's save hook (``AutotuneCache.local_cache``) writes
there. torchkiln compiles into a private cache dir that is gone when the artifact loads (kernels/record.py); a
plain torch user whose Inductor cache moved (another ``TORCHINDUCTOR_CACHE_DIR``, another machine) hits the same.

Fix (``repairs_load``, ``needs_triton``; the probe loads one autotuner through torch's own ``load_autotuners``, no
compile, no GPU): ``TritonBundler.load_autotuners`` is wrapped; before torch's original runs, each autotuner whose
``filename`` lies outside this process's ``cache_dir()`` is re-pointed at the path where this process's Inductor
keeps that kernel's source (``<cache_dir>/<h[1:3]>/<h>.py``, ``codecache.get_path``'s layout: the file
``PyCodeCache`` writes and the bundle restores), and its save hook's ``.best_config`` path moves with it. Only
paths move: the configs, their hash and the tuning results are the compile's, and ``check_autotune_cache`` still
refuses a ``.best_config`` whose ``configs_hash`` or ``torch_key`` differs, so a stale file is a re-tune, never a
wrong kernel.

Upstream: not reported or fixed in a release installed here (2.13's ``load_autotuners`` is unchanged).
Affected: torch >=2.10.dev0 (no upper bound until upstream re-points ``filename``; the probe retires the fix then).
Touches: ``torch._inductor.triton_bundler.TritonBundler.load_autotuners`` (wrapped; the original kept for
``revert``), read: ``torch._inductor.runtime.cache_dir_utils.cache_dir``,
``torch._inductor.async_compile.CompiledTritonKernels._cache``, ``CachingAutotuner.filename`` and ``save_cache_hook``.
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix

__all__ = ["FIX", "rebased_path"]

_PROBE_KEY = "torchkiln-probe-static-autotuner-paths"


def _bundler_class() -> Any:
    if importlib.util.find_spec("triton") is None:
        return None  # no Triton, no statically launched kernels to load
    try:
        from torch._inductor.triton_bundler import StaticallyLaunchedAutotuner, TritonBundler
    except ImportError:
        return None
    if not isinstance(vars(TritonBundler).get("load_autotuners"), classmethod) or not hasattr(
        StaticallyLaunchedAutotuner, "__dataclass_fields__"
    ):
        return None
    return TritonBundler


def rebased_path(filename: str, cache_dir: str) -> str | None:
    """Where a kernel source saved as ``filename`` by another process lies in the Inductor cache ``cache_dir``, or
    None when it already lies there or does not look like a path PyCodeCache wrote (``<dir>/<h[1:3]>/<h>.py``)."""
    path = Path(filename)
    if path.suffix != ".py" or len(path.stem) < 3 or path.parent.name != path.stem[1:3]:
        return None
    if path.absolute().parent.parent == Path(cache_dir).absolute():
        return None
    return str(Path(cache_dir) / path.parent.name / path.name)  # the layout codecache.get_path gives PyCodeCache's


def _rebase(kernel: Any) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    filename = getattr(kernel, "filename", None)
    if not isinstance(filename, str):
        return
    new = rebased_path(filename, cache_dir())
    if new is None:
        return
    kernel.filename = new
    # The save hook is the compile's AutotuneCache.save, bound to a cache whose .best_config sat beside ``filename``.
    autotune_cache = getattr(getattr(kernel, "save_cache_hook", None), "__self__", None)
    local = getattr(autotune_cache, "local_cache", None)
    if autotune_cache is not None and isinstance(local, tuple) and len(local) == 2 and isinstance(local[1], str):
        autotune_cache.local_cache = (local[0], str(Path(new).parent / Path(local[1]).name))


def _probe() -> bool:
    """Load one autotuner saved under a foreign cache dir through torch's load_autotuners: is it re-pointed?"""
    bundler = _bundler_class()
    if bundler is None:
        return False
    from torch._inductor.async_compile import CompiledTritonKernels
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    from torch._inductor.triton_bundler import StaticallyLaunchedAutotuner

    # No configs, no launchers: the load loop only re-points cubins (there are none) and files a future.
    kernel = object.__new__(CachingAutotuner)
    kernel.compile_results = []
    kernel.filename = str(Path(tempfile.gettempdir()) / "torchkiln-probe-elsewhere" / "inductor" / "bc" / "abcdef.py")
    before = kernel.filename
    try:
        bundler.load_autotuners([StaticallyLaunchedAutotuner(_PROBE_KEY, "probe", kernel)])
    finally:
        CompiledTritonKernels._cache.pop(_PROBE_KEY, None)
    return kernel.filename == before


_patch = ClassPatch(_bundler_class, "load_autotuners")  # reverts to the classmethod object torch defined


def _apply() -> None:
    def replace(original: Any) -> Any:
        load = original.__func__

        @functools.wraps(load)
        def load_autotuners(cls: Any, static_autotuners: Any) -> Any:
            for result in static_autotuners or ():
                _rebase(result.kernel)
            return load(cls, static_autotuners)

        return classmethod(load_autotuners)

    _patch.apply(replace)


# After the other load fix (50) and the save-side pickler (60): it changes where a loaded kernel reads and writes
# its tuning files, independent of what the others change, so any later place gives the same result.
FIX = Fix(
    id="static-autotuner-paths",
    title="a loaded Triton kernel reads its tuning results from this process's Inductor cache",
    upstream="not reported upstream (TritonBundler.load_autotuners re-points cubins, not filename)",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=(
        "torch._inductor.triton_bundler.TritonBundler.load_autotuners",
        "torch._inductor.runtime.cache_dir_utils.cache_dir",
        "CachingAutotuner.filename",
        "CachingAutotuner.save_cache_hook",
    ),
    targets_exist=lambda: _bundler_class() is not None,
    probe=_probe,
    apply=_apply,
    revert=_patch.revert,
    is_applied=_patch.is_applied,
    order=70,
    repairs_load=True,  # the re-tune happens in a process that only loads
    needs_triton=True,
)
