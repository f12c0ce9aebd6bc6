"""The kernel bundle: the built Inductor/Triton cache files an artifact carries so a hit compiles nothing.

Re-exports only. ``bundle.py``: the pure codec (specified in docs/FORMAT.md section 9, fuzzed). ``record.py``: the
files a compile writes, kept and bundled (``recording``, ``bundle_of``). ``install.py``: restoring a bundle's files
into this process's cache dirs (``restore``). The torch side of recording and loading (private cache dir, pinned
settings, CPU ISA, compile threads) lives in ``inductor_cache``; ``loading`` is re-exported from there for the load
path.
"""

from __future__ import annotations

from torchkiln.inductor_cache import PINNED_SETTINGS, inductor_cache_dirs, loading
from torchkiln.kernels.bundle import BUNDLE_FORMAT, MANIFEST
from torchkiln.kernels.install import RestoreReport, restore
from torchkiln.kernels.record import KernelRecording, bundle_of, recording

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "PINNED_SETTINGS",
    "KernelRecording",
    "RestoreReport",
    "bundle_of",
    "inductor_cache_dirs",
    "loading",
    "recording",
    "restore",
]
