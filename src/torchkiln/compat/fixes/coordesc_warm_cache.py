"""Fix ``coordesc-warm-cache``: a loaded Triton kernel re-runs coordinate descent although its result is cached.

Symptom (torch 2.11 on an H200, measured there with ``static-autotuner-paths`` applied): the hit of a GPT-2
compiled with ``mode="max-autotune-no-cudagraphs"`` ran ``CoordescTuner.autotune`` for 7 kernels on its first call
(8.4 s to first output) although every one of them found the artifact's ``.best_config`` in this process's
Inductor cache; no error, only the time (that run's log was lost with the session that made it; with this fix the
same hit runs no tuning, first output 1.87 s: ``benchmarks/results/h200-gpu-tests-modes.txt``).

Cause, two bugs in ``CachingAutotuner.recheck_autotune_cache`` (the re-read of the autotune cache for a kernel
restored from a Triton bundle):
1. It narrows to the cached config only when the kernel has more than one config, and never copies the cached
   config's ``found_by_coordesc`` onto the compile result's config, which is what ``run()`` checks before it
   tunes. pytorch#172819 (open; PR #173391 closed); torch 2.13's ``recheck_autotune_cache`` has both corrected.
2. It re-derives the cache entry's ``configs_hash`` from the configs the restored kernel *still* holds. A kernel
   compiled in a process whose cache already had its tuning result holds only that one config, so the hash no
   longer matches the entry (saved over all the heuristic's configs) and the entry reads as a miss: coordinate
   descent starts over. Present in 2.13 too; not reported upstream.

Fix (``repairs_load``, ``needs_triton``; the probe re-checks one restored kernel against a real ``.best_config``
in a temporary dir, no compile, no GPU): ``recheck_autotune_cache`` is wrapped. It reads the entry through the
kernel's own autotune cache, the ``AutotuneCache`` its ``save_cache_hook`` is bound to: created when the kernel was
built, for this kernel's source and the configs its heuristic produced (``configs_hash``), pointing at this
process's cache (``static-autotuner-paths``). A cached config among the compile results is kept with its
``found_by_coordesc``, one found by coordinate descent outside them is compiled (``_precompile_config``, as torch
2.13 does). No cached entry, or a kernel without such a hook: torch's own ``recheck_autotune_cache``, unchanged.
Nothing is trusted that torch would not: the entry still has to match the configs hash, the source's hash (its
file name) and ``torch_key`` of this torch.

Upstream: pytorch#172819 (1. fixed in torch 2.13's code); 2. not reported.
Affected: torch >=2.10.dev0, where Triton is installed (no upper bound: 2. is in 2.13; the probe decides).
Touches: ``torch._inductor.runtime.triton_heuristics.CachingAutotuner.recheck_autotune_cache`` (wrapped; the
original kept for ``revert``), read: ``AutotuneCache.read_best``/``configs_hash``/``local_cache``,
``CachingAutotuner._precompile_config``, ``triton_heuristics.triton_config_to_hashable``/``dynamo_timed``.
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

__all__ = ["FIX"]


@functools.cache  # asked on every restored kernel's first resolve (the load path): look it up once
def _heuristics() -> Any:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from torch._inductor.runtime import triton_heuristics
        from torch._inductor.runtime.autotune_cache import AutotuneCache
    except ImportError:
        return None
    autotuner = triton_heuristics.CachingAutotuner
    needed = ("recheck_autotune_cache", "_precompile_config", "is_statically_launchable")
    if not all(callable(getattr(autotuner, name, None)) for name in needed):
        return None
    if not all(hasattr(triton_heuristics, n) for n in ("triton_config_to_hashable", "dynamo_timed", "hash_configs")):
        return None
    if not callable(getattr(AutotuneCache, "read_best", None)):
        return None
    return triton_heuristics


def _own_cache(kernel: Any) -> Any:
    """The AutotuneCache the kernel was built with (its save hook's owner), if it has a local cache file."""
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    cache = getattr(getattr(kernel, "save_cache_hook", None), "__self__", None)
    if isinstance(cache, AutotuneCache) and getattr(cache, "local_cache", None) and getattr(cache, "configs_hash", 0):
        return cache
    return None


def _recheck(original: Any, kernel: Any, reload_kernel_from_src: Any) -> None:
    heuristics = _heuristics()
    cache = _own_cache(kernel) if heuristics is not None else None
    configs = [result.config for result in kernel.compile_results]
    best = cache.read_best(kernel.inductor_meta, configs) if cache is not None and configs else None
    if best is None:
        original(kernel, reload_kernel_from_src)
        return
    found = bool(getattr(best, "found_by_coordesc", False))
    kernel.autotune_cache_info = {
        "best_config": heuristics.triton_config_to_hashable(best),
        "autotune_cache_state": "hit",
    }
    wanted = heuristics.triton_config_to_hashable(best)
    for result in kernel.compile_results:
        if heuristics.triton_config_to_hashable(result.config) == wanted:
            result.config.found_by_coordesc = found
            kernel.compile_results = [result]
            return
    if not found:
        original(kernel, reload_kernel_from_src)  # torch's own rules for a cached config it never compiled
        return
    # Found by coordinate descent after the restored kernel was compiled: compile that config now (torch 2.13).
    with heuristics.dynamo_timed("CachingAutotuner.slow_precompile_config"):
        if kernel.fn.fn is None:
            kernel.fn = reload_kernel_from_src().fn
        kernel.compile_results = [kernel._precompile_config(best)]


def _probe() -> bool:
    """A restored one-config kernel whose own cache holds a coordinate-descent result made over two configs: after
    torch's re-check, would its first call tune again (``found_by_coordesc`` not on its config)?"""
    heuristics = _heuristics()
    if heuristics is None:
        return False
    import triton
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    meta: dict[str, object] = {"coordinate_descent_tuning": True, "autotune_local_cache": True}
    kept = triton.Config({"XBLOCK": 8}, num_warps=2, num_stages=1)
    built_from = [kept, triton.Config({"XBLOCK": 16}, num_warps=4, num_stages=1)]
    with tempfile.TemporaryDirectory(prefix="torchkiln-probe-") as tmp:
        filename = str(Path(tmp) / "bc" / "abcdef.py")
        cache = AutotuneCache.create(meta, filename, heuristics.hash_configs(built_from))
        if cache is None:
            return False
        cache.save(triton.Config({"XBLOCK": 8}, num_warps=2, num_stages=1), 0, found_by_coordesc=True)
        result = object.__new__(heuristics.StaticTritonCompileResult)
        result.config = kept
        kernel = object.__new__(heuristics.CachingAutotuner)
        kernel.compile_results = [result]
        kernel.filename = filename
        kernel.inductor_meta = meta
        kernel.save_cache_hook = cache.save

        def no_source() -> Any:
            raise RuntimeError("probe kernel has no source")

        try:
            kernel.recheck_autotune_cache(reload_kernel_from_src=no_source)
        except RuntimeError:
            return True  # it went looking for another config: the cached one was not recognised
    return not getattr(kernel.compile_results[0].config, "found_by_coordesc", False)


def _autotuner_class() -> Any:
    heuristics = _heuristics()
    return None if heuristics is None else heuristics.CachingAutotuner


_patch = ClassPatch(_autotuner_class, "recheck_autotune_cache")


def _apply() -> None:
    def replace(original: Any) -> Any:
        @functools.wraps(original)  # keeps the name: torch pickles bound methods of this class by name
        def recheck_autotune_cache(self: Any, reload_kernel_from_src: Any) -> None:
            _recheck(original, self, reload_kernel_from_src)

        return recheck_autotune_cache

    _patch.apply(replace)


# After static-autotuner-paths (70): the re-check runs when a restored kernel is first resolved, after the load has
# re-pointed its cache file; the two patch different functions, so their order changes no result.
FIX = Fix(
    id="coordesc-warm-cache",
    title="a restored Triton kernel keeps its cached coordinate-descent result",
    upstream="pytorch#172819 (in 2.13's code); the configs-hash half not reported",
    affected=SpecifierSet(">=2.10.dev0"),
    fixed_in=None,
    touches=(
        "torch._inductor.runtime.triton_heuristics.CachingAutotuner.recheck_autotune_cache",
        "torch._inductor.runtime.autotune_cache.AutotuneCache.read_best",
        "CachingAutotuner._precompile_config",
    ),
    targets_exist=lambda: _heuristics() is not None,
    probe=_probe,
    apply=_apply,
    revert=_patch.revert,
    is_applied=_patch.is_applied,
    order=80,
    repairs_load=True,
    needs_triton=True,
)
