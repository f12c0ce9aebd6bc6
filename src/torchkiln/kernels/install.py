"""Restoring a kernel bundle's files into this process's Inductor/Triton cache dirs.

This module owns where a bundle name lands on disk and how it gets there: the cache dirs (computed without
importing ``torch._inductor`` on the hit path), the mapping of a checked name (bundle.py) onto them, the refusal of
a target whose parent resolves outside them (a symlinked sub-dir), and one atomic, never-overwriting create per
file (atomic_files.create_new). :func:`restore` is what a hit runs: on a warm host it only stats files.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from torchkiln import atomic_files, inductor_cache
from torchkiln.kernels import bundle
from torchkiln.kernels.bundle import Manifest

__all__ = ["RestoreReport", "cache_dirs", "restore", "target_path", "write_files", "write_new"]


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore` did. ``settings``/``isa``/``cpu_matches`` feed ``inductor_cache.loading``."""

    written: int
    present: int  # already in the cache (left untouched)
    bytes_written: int
    seconds: float
    settings: dict[str, bool]
    isa: str | None
    cpu_matches: bool  # False: restore wrote nothing (built on a CPU with extensions this one lacks)
    torch_version: str
    roots: tuple[str, ...]


def cache_dirs() -> list[Path]:
    """``inductor_cache.inductor_cache_dirs()`` without importing ``torch._inductor`` (~1.5 s) on the hit path.

    Mirrors torch/_inductor/runtime/cache_dir_utils.py (torch 2.10-2.13; fbcode's /var/tmp default does not apply
    to pip torch); tests/kernel_bundle/test_install.py checks that both agree.
    """
    if "torch._inductor.runtime.cache_dir_utils" in sys.modules:
        return inductor_cache.inductor_cache_dirs()
    inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if inductor is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            getuid = getattr(os, "getuid", None)
            user = f"uid_{getuid()}" if callable(getuid) else "unknown_user"
        user = re.sub(r'[\\/:*?"<>|]', "_", user)
        inductor = str(Path(tempfile.gettempdir()) / ("torchinductor_" + user))
    # os.path.abspath semantics (normalise, do not resolve symlinks), like torch.
    root = Path(os.path.normpath(Path(inductor).absolute()))
    triton = os.environ.get("TRITON_CACHE_DIR")
    return [root, Path(triton) if triton else root / "triton" / "0"]


def target_path(name: str, dirs: list[Path]) -> Path:
    """Where the bundle file ``name`` lives: its root's dir (``dirs`` in :data:`bundle.ROOTS` order), then the rest."""
    root, *rest = bundle.check_name(name).parts
    return dirs[bundle.ROOTS.index(root)].joinpath(*rest)


def write_new(target: Path, data: bytes, dirs: list[Path]) -> bool:
    """Atomically create ``target``; False if it appeared meanwhile. Refuses symlinked parents."""
    target.parent.mkdir(parents=True, exist_ok=True)
    real_parent = os.path.realpath(target.parent)
    if not any(
        real_parent == os.path.realpath(d) or real_parent.startswith(os.path.realpath(d) + os.sep) for d in dirs
    ):
        raise bundle.corrupt(f"kernel bundle target {target} resolves outside the cache dirs (symlink)")
    # .so files come out of the linker executable; keep that, the rest is plain data. Not fsync'ed: a cache file,
    # like every file Inductor itself writes there, and the restore is on the hit path.
    return atomic_files.create_new(
        target,
        data,
        temp_prefix=f".{target.name}.",
        temp_suffix=".tkln",
        mode=0o755 if target.suffix == ".so" else 0o644,
        durable=False,
    )


def write_files(files: Mapping[str, bytes], dirs: list[Path]) -> None:
    """Create each file of ``files`` that ``dirs`` lack (never overwriting)."""
    for name, data in files.items():
        target = target_path(name, dirs)
        if not os.path.lexists(target):
            write_new(target, data, dirs)


def _cpu_fits(manifest: Manifest) -> bool:
    """Whether this CPU can run the bundle's kernels: the fingerprint's one CPU rule (``missing_cpu_isa``).

    Inductor builds CPU kernels with ``-march=native`` but the flag, not the host, enters the kernels' cache key: a
    .so built on an AVX-512 host has the same name on an AVX2 host and would crash there with SIGILL. A bundle
    restores onto a CPU that has every extension of the compiling one. Bundles written before the list was recorded
    carry only ``cpu`` (a digest of the exact list): those restore onto an identical CPU only.
    """
    from torchkiln.fingerprint import cpu_isa_extensions, missing_cpu_isa

    here = cpu_isa_extensions()
    if manifest.cpu_isa is not None:
        return manifest.machine in (None, platform.machine()) and not missing_cpu_isa(list(manifest.cpu_isa), here)
    if manifest.legacy_cpu is None:
        return True
    text = f"{platform.machine()}|{sys.platform}|{' '.join(here or ())}"
    return manifest.legacy_cpu == hashlib.sha256(text.encode()).hexdigest()[:16]


def restore(data: bytes) -> RestoreReport:
    """Write the bundle's files that are missing into this process's cache dirs.

    Never overwrites (an existing file wins, even if different), writes each file atomically, verifies each written
    file's sha256 against the manifest, and writes nothing when the bundle was built on a host with other CPU
    features. Raises ``ArtifactCorruptError`` for a malformed or hostile bundle: before writing anything for
    a structural fault (bundle.decode), before writing that file for a file whose bytes do not match its sha256.
    """
    start = time.perf_counter()
    with bundle.decode(data) as opened:
        manifest = opened.manifest
        dirs = cache_dirs()
        # Only the settings the kernels are keyed by are ever re-applied: a bundle cannot set arbitrary config.
        settings = {k: v for k, v in manifest.settings.items() if k in inductor_cache.PINNED_SETTINGS}
        cpu_matches = _cpu_fits(manifest)
        written = present = nbytes = 0
        if cpu_matches:
            for entry in opened.entries:
                target = target_path(entry.name, dirs)
                if os.path.lexists(target):
                    present += 1
                    continue
                blob = opened.read(entry)
                if write_new(target, blob, dirs):
                    written += 1
                    nbytes += len(blob)
                else:
                    present += 1
    return RestoreReport(
        written=written,
        present=present,
        bytes_written=nbytes,
        seconds=time.perf_counter() - start,
        settings=settings,
        isa=manifest.isa,
        cpu_matches=cpu_matches,
        torch_version=manifest.torch_version,
        roots=tuple(str(d) for d in dirs),
    )
