"""Where a kernel bundle's files go, and how they get there: the Inductor/Triton cache dirs, path checks, and an
atomic never-overwriting create per file (kernels.py owns the bundle format and the recording around a compile).

Nothing here imports ``torch._inductor`` on the hit path unless the process already did.
"""

from __future__ import annotations

import getpass
import os
import re
import sys
import tempfile
from pathlib import Path, PurePosixPath

from torchkiln.errors import ArtifactCorruptError

__all__ = ["inductor_cache_dirs"]

_ROOTS = ("inductor", "triton")


def inductor_cache_dirs() -> list[Path]:
    """The Inductor and Triton cache dirs of this process, from torch's own helpers.

    Triton's dir is the one Inductor gives Triton for device 0 when ``TRITON_CACHE_DIR`` is unset.
    """
    from torch._inductor.runtime.cache_dir_utils import cache_dir, triton_cache_dir

    return [Path(cache_dir()), Path(triton_cache_dir(0))]


def _cache_dirs_without_inductor() -> list[Path]:
    """:func:`inductor_cache_dirs` without importing ``torch._inductor`` (~1.5 s) on the hit path.

    Mirrors torch/_inductor/runtime/cache_dir_utils.py (torch 2.10-2.13; fbcode's /var/tmp default
    does not apply to pip torch); tests/test_kernels.py checks that both agree.
    """
    if "torch._inductor.runtime.cache_dir_utils" in sys.modules:
        return inductor_cache_dirs()
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


def _check_name(name: str) -> PurePosixPath:
    """Reject anything but a plain relative path under one of the known roots."""
    path = PurePosixPath(name)
    bad = (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or name.startswith("/")
        or len(path.parts) < 2
        or path.parts[0] not in _ROOTS
        or any(part in ("", ".", "..") for part in name.split("/"))
        or re.match(r"^[A-Za-z]:", name) is not None
    )
    if bad:
        raise ArtifactCorruptError(
            f"kernel bundle entry {name!r} is not a plain relative path under {'/'.join(_ROOTS)}",
            where="kernel bundle",
            fix="the artifact is corrupt or hostile; delete it with torchkiln rm KEY",
        )
    return path


def _corrupt(what: str) -> ArtifactCorruptError:
    return ArtifactCorruptError(
        what, where="kernel bundle", fix="delete the artifact with torchkiln rm KEY and recompile"
    )


def _target(name: str, dirs: list[Path]) -> Path:
    root, *rest = _check_name(name).parts
    return dirs[_ROOTS.index(root)].joinpath(*rest)


def _write_new(target: Path, data: bytes, dirs: list[Path]) -> bool:
    """Atomically create ``target``; False if it appeared meanwhile. Refuses symlinked parents."""
    target.parent.mkdir(parents=True, exist_ok=True)
    real_parent = os.path.realpath(target.parent)
    if not any(
        real_parent == os.path.realpath(d) or real_parent.startswith(os.path.realpath(d) + os.sep) for d in dirs
    ):
        raise _corrupt(f"kernel bundle target {target} resolves outside the cache dirs (symlink)")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tkln")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # .so files come out of the linker executable; keep that, the rest is plain data.
        tmp.chmod(0o755 if target.suffix == ".so" else 0o644)
        try:
            os.link(tmp, target)  # fails if target exists: never overwrite, even when racing
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: near-atomic fallback
            if os.path.lexists(target):
                return False
            tmp.replace(target)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _write_files(files: dict[str, bytes], dirs: list[Path]) -> None:
    for name, data in files.items():
        target = _target(name, dirs)
        if not os.path.lexists(target):
            _write_new(target, data, dirs)
