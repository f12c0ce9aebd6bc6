"""Fix ``triton-bundle-losing-configs``: a GPU artifact carries every Triton config the compile tried.

Symptom (torch 2.11 on an H200, checked there with ``benchmarks/bundle_usage.py``): the demo transformer's CUDA
artifact is 2.74 MB, of which 2.33 MB is torch's serialized function, for 6 Triton kernels; 11 compiled kernel
directories travel in it, each with Triton's intermediate files. No error: only the size (and the time to read,
verify and restore it on every machine of a fleet).

Cause: Inductor's ``TritonBundler`` (the Triton kernels bundled into the FX graph entry, which ``aot_compile``
serializes) records every kernel compiled during the compile (``TritonBundler.put`` in ``_precompile_worker``) and
``collect`` bundles them all: a pointwise kernel tuned at compile time (torchkiln tunes launch configs at compile
time on a GPU, inductor_options.py) leaves one directory per config it benchmarked, the losers included, with
their ``.llir``/``.ptx``/``.ttgir``/``.ttir``/``.source`` files.

Fix (compile path, only inside torchkiln's own compile: ``scope``): ``TritonBundler.collect`` is wrapped; from what
torch's collect returns it drops the kernel directories of a *statically launched* kernel that its saved
autotuner does not use: a directory goes only when its kernel's name is one of the saved autotuners' and its hash
is none of that autotuner's compile results' (what ``load_autotuners`` re-points at load). Every directory a saved
autotuner names stays (pytorch#194918: 2.13's own filter drops cubins its snapshots still name, and
``load_autotuners`` then discards the whole autotuner), and so does every directory of a kernel that is not
statically launched (its config is picked at load from what is there). Off while coordinate-descent tuning is on
(``max-autotune`` modes): its winner is compiled after the autotuner was saved, so no saved autotuner names it.

Upstream: pytorch#178470 (torch 2.13) bundles only the winning configs, tracked through ``TritonBundler.put_winner``;
pytorch#194918 (open) is the snapshot half. Affected: torch >=2.10.dev0,<2.13.dev0; the probe (no
``TritonBundler.put_winner``, and the shape of ``collect``'s result) retires it where upstream's filter exists.
Touches: ``torch._inductor.triton_bundler.TritonBundler.collect`` (wrapped inside the scope, torch's classmethod put
back after), read: ``TritonBundle``, ``TritonKernelArtifacts``, ``StaticallyLaunchedAutotuner.kernel.compile_results``,
``torch._inductor.runtime.runtime_utils.triton_hash_to_path_key``, ``torch._inductor.config.coordinate_descent_tuning``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln.compat.class_patch import ClassPatch
from torchkiln.compat.fix import Fix

__all__ = ["FIX", "used_artifacts"]

#: Triton's compiled-kernel binaries: the file whose stem is the kernel's name in a kernel directory.
_BINARY_SUFFIXES = (".cubin", ".hsaco", ".zebin", ".spv")

_active = False


def _bundler_class() -> Any:
    if importlib.util.find_spec("triton") is None:
        return None  # no Triton, no Triton bundle
    try:
        from torch._inductor.triton_bundler import TritonBundle, TritonBundler, TritonKernelArtifacts
    except ImportError:
        return None
    fields = set(getattr(TritonBundle, "__dataclass_fields__", ()))
    if not isinstance(vars(TritonBundler).get("collect"), classmethod) or fields != {
        "kernel_artifacts",
        "static_autotuners",
    }:
        return None
    if not {"kernel_hash", "artifacts"} <= set(getattr(TritonKernelArtifacts, "__dataclass_fields__", ())):
        return None
    return TritonBundler


def _kernel_name(artifacts: Any) -> str | None:
    names = {PurePosixPath(a.filename).stem for a in artifacts.artifacts if a.filename.endswith(_BINARY_SUFFIXES)}
    return names.pop() if len(names) == 1 else None


def used_artifacts(kernel_artifacts: Sequence[Any], static_autotuners: Sequence[Any], path_key: Any) -> list[Any]:
    """``kernel_artifacts`` without the directories no saved autotuner of that kernel uses (module docstring);
    ``path_key`` maps a compiled kernel's hash to its directory name (torch's ``triton_hash_to_path_key``)."""
    used: dict[str, set[str]] = {}
    for saved in static_autotuners:
        hashes = used.setdefault(saved.kernel_name, set())
        for result in getattr(saved.kernel, "compile_results", None) or ():
            kernel_hash = getattr(getattr(result, "kernel", None), "hash", None)
            if not isinstance(kernel_hash, str):
                return list(kernel_artifacts)  # a result whose directory is unknown: keep everything
            hashes.add(path_key(kernel_hash))
    kept = []
    for entry in kernel_artifacts:
        name = _kernel_name(entry)
        if name is None or name not in used or entry.kernel_hash in used[name]:
            kept.append(entry)
    return kept


def _probe() -> bool:
    bundler = _bundler_class()
    return bundler is not None and not hasattr(bundler, "put_winner")


_patch = ClassPatch(_bundler_class, "collect")  # reverts to the classmethod object torch defined


def _wrap(original: Any) -> Any:
    collect = original.__func__

    @functools.wraps(collect)
    def collect_used(cls: Any) -> Any:
        from torch._inductor import config
        from torch._inductor.runtime.runtime_utils import triton_hash_to_path_key

        bundle, metadata = collect(cls)
        if config.coordinate_descent_tuning or not bundle.static_autotuners:
            return bundle, metadata
        kept = used_artifacts(bundle.kernel_artifacts, bundle.static_autotuners, triton_hash_to_path_key)
        return dataclasses.replace(bundle, kernel_artifacts=kept), metadata

    return classmethod(collect_used)


def _apply() -> None:
    global _active
    _active = True


def _revert() -> None:
    global _active
    _active = False


@contextlib.contextmanager
def _scope() -> Iterator[None]:
    _patch.apply(_wrap)
    try:
        yield
    finally:
        _patch.revert()


# Compile path only, inside torchkiln's compile; after the load fixes (70, 80: they change how a loaded kernel finds
# its files, this one which files are saved), so any later place gives the same result.
FIX = Fix(
    id="triton-bundle-losing-configs",
    title="a GPU artifact carries only the Triton configs its saved autotuners use",
    upstream="pytorch#178470 (torch 2.13: only winning configs are bundled), pytorch#194918 (open)",
    affected=SpecifierSet(">=2.10.dev0,<2.13.dev0"),
    fixed_in="2.13",
    touches=(
        "torch._inductor.triton_bundler.TritonBundler.collect",
        "torch._inductor.triton_bundler.TritonBundle",
        "StaticallyLaunchedAutotuner.kernel.compile_results",
        "torch._inductor.runtime.runtime_utils.triton_hash_to_path_key",
        "torch._inductor.config.coordinate_descent_tuning",
    ),
    targets_exist=lambda: _bundler_class() is not None,
    probe=_probe,
    apply=_apply,
    revert=_revert,
    is_applied=lambda: _active,
    scope=_scope,
    order=95,
    needs_triton=True,
)
