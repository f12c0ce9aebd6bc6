"""The fix ``triton-bundle-losing-configs``: a GPU artifact carries only the Triton kernel directories its saved
autotuners use (src/torchkiln/compat/fixes/triton_bundle_losing_configs.py).

The size and the hit are measured on a GPU (``benchmarks/bundle_usage.py``, ``tests/gpu``: a hit of the smaller
artifact writes no kernel file and tunes nothing). Here: the rule, on torch's own bundle records, and torch's
``TritonBundler.collect`` patched only inside the fix's scope (compat lane: the CPU wheel has no Triton).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from torchkiln.compat.fixes import triton_bundle_losing_configs
from torchkiln.compat.fixes.triton_bundle_losing_configs import used_artifacts

triton_bundler = pytest.importorskip("torch._inductor.triton_bundler")
pytest.importorskip("triton")


def _dir(kernel_hash: str, name: str, binary: str = ".cubin") -> Any:
    files = [f"{name}{binary}", f"{name}.json", f"__grp__{name}.json", f"{name}.ptx"]
    return triton_bundler.TritonKernelArtifacts(
        kernel_hash, 0, [triton_bundler.TritonKernelArtifact(f, b"x") for f in files]
    )


def _saved(name: str, *hashes: str) -> Any:
    results = [SimpleNamespace(kernel=SimpleNamespace(hash=h)) for h in hashes]
    return triton_bundler.StaticallyLaunchedAutotuner(f"key-{name}", name, SimpleNamespace(compile_results=results))


def _key(kernel_hash: str) -> str:
    return kernel_hash.upper()  # stands for triton_hash_to_path_key: the saved hash -> the directory's name


@pytest.mark.compat
def test_only_the_losing_configs_of_a_statically_launched_kernel_are_dropped() -> None:
    artifacts = [
        _dir("WIN", "triton_poi_a"),
        _dir("LOSE1", "triton_poi_a"),
        _dir("LOSE2", "triton_poi_a"),
        _dir("ONLY", "triton_per_b"),  # saved autotuner names it
        _dir("NOTSTATIC1", "triton_red_c"),  # no saved autotuner: its config is picked at load
        _dir("NOTSTATIC2", "triton_red_c"),
        triton_bundler.TritonKernelArtifacts("UTILS", 0, [triton_bundler.TritonKernelArtifact("cuda_utils.so", b"")]),
    ]
    kept = used_artifacts(artifacts, [_saved("triton_poi_a", "win"), _saved("triton_per_b", "only")], _key)
    assert [a.kernel_hash for a in kept] == ["WIN", "ONLY", "NOTSTATIC1", "NOTSTATIC2", "UTILS"]


@pytest.mark.compat
def test_a_saved_autotuner_naming_every_config_keeps_them_all() -> None:
    """pytorch#194918: a snapshot that names a config whose cubin is missing is discarded whole at load."""
    artifacts = [_dir("A", "k"), _dir("B", "k")]
    assert used_artifacts(artifacts, [_saved("k", "a", "b")], _key) == artifacts


@pytest.mark.compat
def test_a_compile_result_without_a_hash_keeps_everything() -> None:
    artifacts = [_dir("A", "k"), _dir("B", "k")]
    saved = triton_bundler.StaticallyLaunchedAutotuner("key", "k", SimpleNamespace(compile_results=[object()]))
    assert used_artifacts(artifacts, [saved], _key) == artifacts


@pytest.mark.compat
def test_collect_is_wrapped_only_inside_the_scope() -> None:
    fix = triton_bundle_losing_configs.FIX
    assert fix.targets_exist() and fix.probe()  # torch 2.11: no TritonBundler.put_winner
    torch_own = vars(triton_bundler.TritonBundler)["collect"]
    with fix.scope():  # type: ignore[misc]
        inside = vars(triton_bundler.TritonBundler)["collect"]
        assert inside is not torch_own and isinstance(inside, classmethod)
        bundle, _ = triton_bundler.TritonBundler.collect()  # nothing compiled: torch's empty bundle, unchanged
        assert bundle.kernel_artifacts == [] and bundle.static_autotuners == []
    assert vars(triton_bundler.TritonBundler)["collect"] is torch_own
