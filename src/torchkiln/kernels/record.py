"""Recording the Inductor/Triton cache files a compile produces, and bundling them for the artifact.

A torch AOT artifact carries generated source, not built kernels: loading it in a process whose Inductor cache is
empty rebuilds every C++ kernel with g++ (and re-probes the CPU ISA with more g++ builds). The artifact's
``kernels`` section makes it self-contained. This module owns the file side of that: :func:`recording` runs the
compile inside ``inductor_cache.recording`` (which owns the torch side: the private cache dir, the pinned
settings, the picked ISA), then keeps every file the compile wrote there except those a bundle must never carry,
and publishes them into the user's own cache; :func:`bundle_of` encodes a recording (bundle.py).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torchkiln import inductor_cache
from torchkiln.errors import ArtifactCorruptError
from torchkiln.kernels import bundle, install

__all__ = ["KernelRecording", "bundle_of", "recording"]

_log = logging.getLogger("torchkiln.kernels")

# Cache sub-trees never bundled: lock files, Triton's temp dirs, and the AOTAutograd / FX graph caches, whose
# entries the artifact's payload already carries (and which are pickles that a later ordinary torch.compile would
# unpickle: a bundle must not plant them).
_SKIP_TOP = frozenset({"locks", "aotautograd", "fxgraph"})


@dataclasses.dataclass
class KernelRecording:
    """What one :func:`recording` captured; filled in when the ``with`` block exits."""

    private_dir: Path
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # "inductor/ab/c.so" -> bytes
    settings: dict[str, bool] = dataclasses.field(default_factory=lambda: dict(inductor_cache.PINNED_SETTINGS))
    isa: str | None = None  # Inductor's picked CPU vector ISA, e.g. "avx2"; None if never probed
    cpu_isa: tuple[str, ...] | None = None  # this CPU's instruction-set extensions (fingerprint.cpu_isa_extensions)
    torch_version: str = ""


@contextlib.contextmanager
def recording() -> Iterator[KernelRecording]:
    """Run the enclosed ``aot_compile`` against a fresh private Inductor/Triton cache and keep what it wrote.

    Afterwards the files are published into the user's cache (never overwriting) and kept for :func:`bundle_of`.
    The private dir itself is removed when the process exits, not here: the compiled function this process runs
    was loaded from it, and its Triton kernels keep writing there (a ``.best_config`` from a tuning at first launch,
    a source reloaded for a recompile); removing it now only made torch recreate it, and leave it behind.
    """
    user_dirs = inductor_cache.inductor_cache_dirs()  # before the scope redirects them
    private = Path(tempfile.mkdtemp(prefix="torchkiln-kernels-"))
    try:
        with inductor_cache.recording(private) as recorded:
            rec = KernelRecording(private_dir=private, torch_version=recorded.torch_version)
            yield rec
        rec.isa = recorded.isa
        from torchkiln.fingerprint import cpu_isa_extensions

        rec.cpu_isa = cpu_isa_extensions()
        rec.files = _collect(private)
        # The user's own cache gets the kernels too, so a plain torch.compile benefits. A courtesy: the artifact
        # does not depend on it, so a failure is logged, not raised.
        try:
            install.write_files(rec.files, user_dirs)
        except (OSError, ArtifactCorruptError) as exc:
            _log.warning("could not copy compiled kernels into %s: %s", user_dirs[0], exc)
    finally:
        atexit.register(shutil.rmtree, private, ignore_errors=True)


def _collect(private: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for root in bundle.ROOTS:
        base = private / root
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(base)
            if (
                path.is_symlink()
                or not path.is_file()
                or rel.parts[0] in _SKIP_TOP
                or rel.parts[0].startswith("tmp.")
                or path.suffix in (".lock", ".tmp")
            ):
                continue
            files[f"{root}/{rel.as_posix()}"] = path.read_bytes()
    return files


def bundle_of(rec: KernelRecording) -> bytes:
    """A deterministic zip of the recording: same files and settings give the same bytes (docs/FORMAT.md 9.1)."""
    return bundle.encode(
        rec.files,
        torch_version=rec.torch_version,
        settings=rec.settings,
        isa=rec.isa,
        machine=platform.machine(),
        cpu_isa=rec.cpu_isa,
    )
