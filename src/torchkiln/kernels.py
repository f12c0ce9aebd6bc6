"""Collect and restore the Inductor/Triton cache files an aot_compile artifact needs at load.

A torch AOT artifact carries generated source, not built kernels: loading it in a process whose
Inductor cache is empty rebuilds every C++ kernel with g++ (and re-probes the CPU ISA with more
g++ builds). This module owns the "kernel bundle" section that makes an artifact self-contained:

* :func:`recording` wraps the ``aot_compile`` call and redirects Inductor (and Triton) into a
  fresh private cache dir, so every file the compile produces is known *exactly*, even when the
  user's cache already held some of them (a snapshot/diff of the user's cache would miss those,
  and hooking torch's loaders would tie us to private call sites). Afterwards the files are
  published into the user's cache (never overwriting) and kept for :func:`bundle`.
* :func:`bundle` turns a recording into a deterministic zip (sorted names, fixed timestamps,
  a ``MANIFEST.json`` with per-file sha256 and the settings the kernels' cache keys depend on).
* :func:`restore` writes the bundle's missing files into the running process's cache dirs
  (atomic per file, never overwriting, path-checked, size-capped). It imports neither torch
  nor ``torch._inductor``: on a warm host it only stats files.
* :func:`loading` wraps ``load_compiled_function``: it re-applies the recorded settings (the
  kernels' cache keys hash them) and lets Inductor trust the recorded CPU ISA instead of
  re-probing it with a dry g++ build plus a ``dlopen`` subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import stat
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torchkiln.errors import ArtifactCorruptError
from torchkiln.kernel_install import (
    _ROOTS,
    _cache_dirs_without_inductor,
    _check_name,
    _corrupt,
    _target,
    _write_files,
    _write_new,
    inductor_cache_dirs,
)

__all__ = [
    "BUNDLE_FORMAT",
    "KernelRecording",
    "RestoreReport",
    "bundle",
    "inductor_cache_dirs",
    "loading",
    "recording",
    "restore",
]

_log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "MANIFEST.json"
# Caps against a hostile or corrupt bundle (zip bombs). A CPU kernel .so is ~50 KiB-5 MiB and a
# cubin a few MiB; a real bundle is far below these.
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_FILES = 20_000
# Inductor settings that enter the kernels' cache keys and that recording() pins. Only these
# are ever re-applied from a manifest: a bundle must not be able to set arbitrary config.
# cpp_cache_precompile_headers=False: with it on, every fresh process runs `g++ -E` on the
# torch headers before each kernel lookup (even when the .so exists) and the PCH lives outside
# TORCHINDUCTOR_CACHE_DIR; the flag also adds a -D to the hashed command line, so the compile
# and the load must agree on it.
PINNED_SETTINGS: dict[str, bool] = {"cpp_cache_precompile_headers": False}
# Cache sub-trees never bundled: lock files, Triton's temp dirs, and the AOTAutograd / FX graph
# caches, whose entries the artifact's payload already carries (and which are pickles that a
# later ordinary torch.compile would unpickle: a bundle must not plant them).
_SKIP_TOP = frozenset({"locks", "aotautograd", "fxgraph"})
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclasses.dataclass
class KernelRecording:
    """What one :func:`recording` captured; filled in when the ``with`` block exits."""

    private_dir: Path
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)  # "inductor/ab/c.so" -> bytes
    settings: dict[str, bool] = dataclasses.field(default_factory=lambda: dict(PINNED_SETTINGS))
    isa: str | None = None  # Inductor's picked CPU vector ISA, e.g. "avx2"; None if never probed
    cpu_isa: tuple[str, ...] | None = None  # this CPU's instruction-set extensions (fingerprint.cpu_isa_extensions)
    torch_version: str = ""


@dataclasses.dataclass(frozen=True)
class RestoreReport:
    """What :func:`restore` did. ``settings``/``isa`` feed :func:`loading`."""

    written: int
    present: int  # already in the cache (left untouched)
    bytes_written: int
    seconds: float
    settings: dict[str, bool]
    isa: str | None
    cpu_matches: bool  # False: restore wrote nothing (built on a CPU with extensions this one lacks)
    torch_version: str
    roots: tuple[str, ...]


def _cpu_fits(manifest: dict[str, Any]) -> bool:
    """Whether this CPU can run the bundle's kernels: the fingerprint's one CPU rule (``missing_cpu_isa``).

    Inductor builds CPU kernels with ``-march=native`` but the flag, not the host, enters the kernels' cache
    key: a .so built on an AVX-512 host has the same name on an AVX2 host and would crash there with SIGILL. A
    bundle restores onto a CPU that has every extension of the compiling one. Bundles written before the list
    was recorded carry only ``cpu`` (a digest of the exact list): those restore onto an identical CPU only.
    """
    from torchkiln.fingerprint import cpu_isa_extensions, missing_cpu_isa

    here = cpu_isa_extensions()
    built = manifest.get("cpu_isa")
    if isinstance(built, list):
        return manifest.get("machine") in (None, platform.machine()) and not missing_cpu_isa(
            [str(f) for f in built], here
        )
    legacy = manifest.get("cpu")
    if legacy is None:
        return True
    text = f"{platform.machine()}|{sys.platform}|{' '.join(here or ())}"
    return bool(legacy == hashlib.sha256(text.encode()).hexdigest()[:16])


@contextlib.contextmanager
def _env(values: dict[str, str | None]) -> Iterator[None]:
    """Set/unset env vars and restore them; Inductor itself sets TRITON_CACHE_DIR as a side effect."""
    names = [*values, "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"]
    old = {name: os.environ.get(name) for name in names}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def recording() -> Iterator[KernelRecording]:
    """Run the enclosed ``aot_compile`` against a fresh private Inductor/Triton cache.

    Costs a full compile even when the user's Inductor cache could have served parts of it: that
    is the price of knowing exactly which files the artifact needs. In-memory code caches are
    cleared on entry and exit (as torch's own ``fresh_cache`` does) so nothing is served from, or
    later resolved against, the wrong dir.
    """
    import torch
    from torch._inductor import config
    from torch._inductor.utils import clear_caches

    user_dirs = inductor_cache_dirs()
    private = Path(tempfile.mkdtemp(prefix="torchkiln-kernels-"))
    rec = KernelRecording(private_dir=private, torch_version=torch.__version__)
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(private / "inductor"),
        "TRITON_CACHE_DIR": str(private / "triton"),
    }
    try:
        with _env(dict(env)), config.patch(dict(PINNED_SETTINGS)):
            clear_caches()
            try:
                yield rec
            finally:
                clear_caches()
        rec.isa = _picked_isa()
        from torchkiln.fingerprint import cpu_isa_extensions

        rec.cpu_isa = cpu_isa_extensions()
        rec.files = _collect(private)
        # The user's own cache gets the kernels too, so a plain torch.compile benefits. A courtesy:
        # the artifact does not depend on it, so a failure is logged, not raised.
        try:
            _write_files(rec.files, user_dirs)
        except (OSError, ArtifactCorruptError) as exc:
            _log.warning("could not copy compiled kernels into %s: %s", user_dirs[0], exc)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _picked_isa() -> str | None:
    """Inductor's chosen CPU vector ISA, only if this process already probed it (no extra probe)."""
    from torch._inductor import cpu_vec_isa

    if cpu_vec_isa.valid_vec_isa_list.cache_info().currsize == 0:
        return None
    return str(cpu_vec_isa.pick_vec_isa())


def _collect(private: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for root in _ROOTS:
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


def bundle(recording: KernelRecording) -> bytes:
    """A deterministic zip of the recording: same files and settings give the same bytes."""
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "torch": recording.torch_version,
        "settings": dict(sorted(recording.settings.items())),
        "isa": recording.isa,
        "machine": platform.machine(),
        "cpu_isa": None if recording.cpu_isa is None else list(recording.cpu_isa),
        "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in sorted(recording.files.items())
        },
    }
    for name in manifest["files"]:
        _check_name(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        entries = [(MANIFEST, json.dumps(manifest, sort_keys=True).encode())]
        entries += sorted(recording.files.items())
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.create_system = 3  # unix, whatever the build host
            zf.writestr(info, data, compresslevel=6)
    return buf.getvalue()


def _read_manifest(zf: zipfile.ZipFile) -> dict[str, Any]:
    infos = zf.infolist()
    if not infos or infos[0].filename != MANIFEST or infos[0].file_size > MAX_FILE_BYTES:
        raise _corrupt("kernel bundle has no MANIFEST.json first")
    try:
        manifest = json.loads(zf.read(infos[0]))
    except (ValueError, zipfile.BadZipFile) as exc:
        raise _corrupt(f"kernel bundle MANIFEST.json is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise _corrupt(f"kernel bundle format is not {BUNDLE_FORMAT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise _corrupt("kernel bundle manifest has no valid file table")
    names = [info.filename for info in infos[1:]]
    if sorted(names) != sorted(files) or len(set(names)) != len(names):
        raise _corrupt("kernel bundle entries do not match its manifest")
    total = 0
    for info in infos[1:]:
        _check_name(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or (mode and not stat.S_ISREG(mode)):
            raise _corrupt(f"kernel bundle entry {info.filename!r} is not a regular file (link?)")
        meta = files[info.filename]
        if not isinstance(meta, dict) or meta.get("size") != info.file_size:
            raise _corrupt(f"kernel bundle entry {info.filename!r} size disagrees with manifest")
        if info.file_size > MAX_FILE_BYTES:
            raise _corrupt(f"kernel bundle entry {info.filename!r} is over {MAX_FILE_BYTES} bytes")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise _corrupt(f"kernel bundle expands to {total} bytes, over {MAX_TOTAL_BYTES}")
    return manifest


def restore(bundle: bytes) -> RestoreReport:
    """Write the bundle's files that are missing into this process's cache dirs.

    Never overwrites (an existing file wins, even if different), writes each file atomically,
    verifies each written file's sha256 against the manifest, and writes nothing when the bundle
    was built on a host with other CPU features. Raises :class:`ArtifactCorruptError` for a
    malformed or hostile bundle (before writing anything).
    """
    start = time.perf_counter()
    try:
        zf = zipfile.ZipFile(io.BytesIO(bundle))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise _corrupt(f"kernel bundle is not a zip: {exc}") from exc
    with zf:
        manifest = _read_manifest(zf)
        dirs = _cache_dirs_without_inductor()
        settings = {
            key: bool(value) for key, value in dict(manifest.get("settings") or {}).items() if key in PINNED_SETTINGS
        }
        cpu_matches = _cpu_fits(manifest)
        written = present = nbytes = 0
        if cpu_matches:
            for info in zf.infolist()[1:]:
                target = _target(info.filename, dirs)
                if os.path.lexists(target):
                    present += 1
                    continue
                data = _read_entry(zf, info, manifest["files"][info.filename]["sha256"])
                if _write_new(target, data, dirs):
                    written += 1
                    nbytes += len(data)
                else:
                    present += 1
    isa = manifest.get("isa")
    return RestoreReport(
        written=written,
        present=present,
        bytes_written=nbytes,
        seconds=time.perf_counter() - start,
        settings=settings,
        isa=isa if isinstance(isa, str) else None,
        cpu_matches=cpu_matches,
        torch_version=str(manifest.get("torch", "")),
        roots=tuple(str(d) for d in dirs),
    )


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, sha256: str) -> bytes:
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)  # bounded: the declared size was capped
    except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC error, truncated deflate stream
        raise _corrupt(f"kernel bundle entry {info.filename!r} is unreadable: {exc}") from exc
    if len(data) != info.file_size or hashlib.sha256(data).hexdigest() != sha256:
        raise _corrupt(f"kernel bundle entry {info.filename!r} sha256 mismatch")
    return data


@contextlib.contextmanager
def loading(report: RestoreReport | None = None) -> Iterator[None]:
    """Wrap ``load_compiled_function`` so the restored kernels are found and nothing is compiled.

    Re-applies the settings the kernels were keyed with, and trusts the recorded CPU ISA when
    Inductor, told to trust the ISAs this CPU reports, picks the same one: then the
    ``valid_vec_isa_list`` cache holds it and no dry-compile/``dlopen`` probe runs. Otherwise the
    cache is cleared and Inductor probes as usual (and compiles kernels for the ISA it picks).
    On AVX-512/AMX hosts the extra bf16/VNNI/AMX probes ignore ``vec_isa_ok``: their built files
    are in the bundle (when the recording was the process's first Inductor compile), so no
    compiler runs, but each still spawns a ``dlopen`` subprocess (torch 2.11: one that imports
    torch).
    """
    from torch._inductor import config

    settings = dict(PINNED_SETTINGS) if report is None else report.settings
    with config.patch(dict(settings)):
        if report is not None and report.isa and report.cpu_matches:
            _trust_isa(report.isa)
        yield


def _trust_isa(recorded: str) -> None:
    # torch internal: valid_vec_isa_list is functools.cache'd per process (torch 2.10-2.13) and
    # reads config.cpp.vec_isa_ok (env TORCHINDUCTOR_VEC_ISA_OK), the documented "skip the
    # check" knob. Only the first computation in a process can be steered.
    from torch._inductor import config, cpu_vec_isa

    cached = getattr(cpu_vec_isa.valid_vec_isa_list, "cache_info", None)
    if cached is None or cached().currsize:
        return
    with config.patch({"cpp.vec_isa_ok": True}):
        picked = str(cpu_vec_isa.pick_vec_isa())
    if picked != recorded:
        cpu_vec_isa.valid_vec_isa_list.cache_clear()
