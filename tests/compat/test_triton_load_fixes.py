"""The fixes for how Triton kernels restored from an artifact load: ``static-autotuner-paths`` (a kernel reads and
writes its ``.best_config`` in this process's Inductor cache, not in the compiling process's gone private dir) and
``coordesc-warm-cache`` (a restored kernel keeps its cached coordinate-descent result instead of tuning again).

The end-to-end proof needs a GPU (statically launched kernels are CUDA's): ``tests/gpu/test_gpu_modes.py``'s GPT-2
``max-autotune-no-cudagraphs`` case counts zero coordinate-descent runs on the hit. Here: the path rule, and torch's
own ``TritonBundler.load_autotuners`` and ``CachingAutotuner.recheck_autotune_cache`` (where a load restores and
first resolves those kernels) with the fixes applied, on a torch with Triton (the compat lane's CUDA build; the CPU
wheel has no Triton, so the fixes are not applicable there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from torchkiln import compat
from torchkiln.compat.fixes.static_autotuner_paths import rebased_path

FIX_ID = "static-autotuner-paths"


def test_a_kernel_source_saved_under_another_cache_dir_moves_to_the_same_place_in_this_one(tmp_path: Path) -> None:
    here = str(tmp_path / "inductor")
    assert rebased_path("/tmp/torchkiln-kernels-x1/inductor/bc/abcdef.py", here) == f"{here}/bc/abcdef.py"


@pytest.mark.parametrize(
    "filename",
    [
        "{here}/bc/abcdef.py",  # already in this cache
        "/elsewhere/inductor/zz/abcdef.py",  # not PyCodeCache's <h[1:3]>/<h>.py layout
        "/elsewhere/inductor/bc/abcdef.so",  # not a Python source
        "/elsewhere/ab.py",
    ],
)
def test_paths_that_are_here_or_not_a_kernel_source_stay(tmp_path: Path, filename: str) -> None:
    here = str(tmp_path / "inductor")
    assert rebased_path(filename.format(here=here), here) is None


def _applied(fix_id: str) -> Iterator[None]:
    fix = compat.get_fix(fix_id)
    if not fix.targets_exist():
        pytest.skip("no Triton in this torch: no statically launched kernels to load")
    fix.revert()
    compat.apply_fixes([fix_id])
    yield
    fix.revert()


@pytest.fixture
def bundler_fix() -> Iterator[None]:
    yield from _applied(FIX_ID)


@pytest.fixture
def coordesc_fix() -> Iterator[None]:
    yield from _applied("coordesc-warm-cache")


@pytest.mark.compat
@pytest.mark.usefixtures("bundler_fix")
def test_load_autotuners_moves_a_kernel_and_its_tuning_file_into_this_process_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._inductor.async_compile import CompiledTritonKernels
    from torch._inductor.runtime.autotune_cache import AutotuneCache
    from torch._inductor.runtime.cache_dir_utils import cache_dir
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner
    from torch._inductor.triton_bundler import StaticallyLaunchedAutotuner, TritonBundler

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "here"))
    compiled_in = tmp_path / "gone" / "inductor" / "bc" / "abcdef.py"
    kernel = object.__new__(CachingAutotuner)
    kernel.compile_results = []
    kernel.filename = str(compiled_in)
    autotune_cache = AutotuneCache.create({"autotune_local_cache": True}, str(compiled_in), "confighash")
    assert autotune_cache is not None
    kernel.save_cache_hook = autotune_cache.save  # what the compile pickled with the kernel
    tuning_file = Path(autotune_cache.local_cache[1]).name
    key = "torchkiln-test-static-autotuner"
    try:
        assert TritonBundler.load_autotuners([StaticallyLaunchedAutotuner(key, "kernel", kernel)]) == ["kernel"]
        loaded = CompiledTritonKernels._cache[key].static_autotuner
    finally:
        CompiledTritonKernels._cache.pop(key, None)
    assert loaded.filename == str(Path(cache_dir()) / "bc" / "abcdef.py")
    assert autotune_cache.local_cache[1] == str(Path(cache_dir()) / "bc" / tuning_file)
    assert not (tmp_path / "gone").exists()  # nothing was written in the compiling process's dir


def _restored_kernel(tmp_path: Path, built_from: int, kept: int, saved: dict[str, object] | None) -> object:
    """A kernel as a load restores it: built from ``built_from`` heuristic configs (its own AutotuneCache, in this
    process's cache), holding ``kept`` compiled configs, with ``saved`` as the cache entry (None: no entry)."""
    import triton
    from torch._inductor.runtime import triton_heuristics
    from torch._inductor.runtime.autotune_cache import AutotuneCache

    meta = {"coordinate_descent_tuning": True, "autotune_local_cache": True}
    configs = [triton.Config({"XBLOCK": 8 * 2**i}, num_warps=2, num_stages=1) for i in range(built_from)]
    filename = str(tmp_path / "inductor" / "bc" / "abcdef.py")
    cache = AutotuneCache.create(meta, filename, triton_heuristics.hash_configs(configs))
    assert cache is not None
    if saved is not None:
        cache.save(triton.Config(dict(saved), num_warps=2, num_stages=1), 0, found_by_coordesc=True)
    kernel = object.__new__(triton_heuristics.CachingAutotuner)
    kernel.compile_results = []
    for config in configs[:kept]:
        result = object.__new__(triton_heuristics.StaticTritonCompileResult)
        result.config = triton.Config(dict(config.kwargs), num_warps=2, num_stages=1)  # as unpickled: no flags
        kernel.compile_results.append(result)
    kernel.filename = filename
    kernel.inductor_meta = meta
    kernel.save_cache_hook = cache.save
    return kernel


def _no_source() -> object:
    raise AssertionError("the re-check compiled another config")


@pytest.mark.compat
@pytest.mark.usefixtures("coordesc_fix")
@pytest.mark.parametrize(("built_from", "kept"), [(1, 1), (3, 1), (3, 3)])
def test_a_restored_kernel_keeps_its_cached_coordinate_descent_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built_from: int, kept: int
) -> None:
    # (3, 1): compiled in a process whose cache already held the result, so the kernel kept one of its 3 configs,
    # and the entry's configs_hash is over all 3 (the GPT-2 hit's reduction kernels)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    kernel = _restored_kernel(tmp_path, built_from, kept, saved={"XBLOCK": 8})
    kernel.recheck_autotune_cache(reload_kernel_from_src=_no_source)  # type: ignore[attr-defined]
    (result,) = kernel.compile_results  # type: ignore[attr-defined]
    assert result.config.kwargs == {"XBLOCK": 8}
    assert result.config.found_by_coordesc  # what run() checks before it tunes
    assert kernel.autotune_cache_info["autotune_cache_state"] == "hit"  # type: ignore[attr-defined]


@pytest.mark.compat
@pytest.mark.usefixtures("coordesc_fix")
def test_a_restored_kernel_without_a_cached_result_is_left_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    kernel = _restored_kernel(tmp_path, 3, 3, saved=None)
    kernel.recheck_autotune_cache(reload_kernel_from_src=_no_source)  # type: ignore[attr-defined]
    assert len(kernel.compile_results) == 3  # type: ignore[attr-defined]  # torch's miss: tuned at first launch
    assert not any(getattr(r.config, "found_by_coordesc", False) for r in kernel.compile_results)  # type: ignore[attr-defined]
