"""The install memo of Inductor's source-tree hash, ``torch_key()``.

``torch._inductor.codecache.torch_key()`` hashes every Python module of the installed torch (~2,300 files; 0.13 s
in a fresh process on the 2-core CPU box, ~0.26 s on a GPU host per issue 12) once per process, when Inductor
first keys anything: every compile (FX graph cache key) and, on a GPU hit, the loaded graph's Triton kernels
(``CompiledTritonKernels.key``). A CPU hit (torch 2.11, 2.13) does not call it. The value changes only with those
files, so :func:`prime_torch_key` (called by ``loader.prepare_load`` and ``compiler.compile_target`` before torch's
load or compile) hands torch the memoized value through the hook torch gives the function, ``torch_key.set(value)``.
Without a valid memo torch hashes (once per install: the first miss or hit) and the result is memoized.

Where: ``<user cache dir>/torchkiln/v1/memo/torch-key-<24 hex of the torch dir>.json`` (platformdirs; one file per
torch directory, replaced when the install changes); local only, never in a shared or remote store.

Identity: a sha256 over torch's version, the torch directory (path, real path, inode), the stat of its dist-info
``RECORD`` and ``direct_url.json`` when they sit next to it, and path, size, mtime, ctime, inode and device of every
file ``torch_key`` reads: a superset of its walk (``build_code_hash``: each file with an importable suffix in each
package directory, i.e. one holding an ``__init__`` module) plus Inductor's two extra files. So a reinstall,
upgrade or downgrade (every file written again: new inode and ctime, ``RECORD`` rewritten), an edit, ``git
checkout`` or rebuild of an editable/source install (whose ``RECORD`` does not list the sources), a hand edit of one
file in site-packages (the kernel sets ctime on every write; user space cannot set it back), an added or removed
module: each changes it. Racily clean files (git's term): a memo is saved only when the identity is the same before
and after torch hashed and no hashed file changed in the 2 s before, so a later write cannot keep a recorded stat.
A check costs one ``stat`` per file and one small read.

Reading validates everything: a regular file, not a link, this user's, not group/world-writable, <= 64 KiB, format
and kind, this install's identity, a 64-hex value, a sha256 over the content; anything else is ignored and
recomputed (``detail`` says why). Writes are atomic (atomic_files.replace: a 0600 temp file in the 0700 directory,
fsync'ed, then a rename). The identity itself is computed in identity.py.

Probe, like a forward fix: used only where torch is in :data:`TORCH_KEY_RANGE` and has ``codecache.torch_key`` with
callable ``set`` and ``clear`` (2.11: ``codecache.torch_key_cache``, whose ``set`` asserts it is empty; 2.13:
``torch.utils._functools.prefetchable_cache``, whose ``set`` raises ``RuntimeError`` once a value is there) and
``codecache._TORCH_PATH``, outside fbcode (whose ``torch_key`` reads ``src_hash.txt``). Otherwise the plain path:
torch hashes, as without torchkiln; never an ImportError. Checked on torch 2.11.0 and 2.13.0 (2.12 not run here);
the range ends before 2.14 because the identity mirrors what ``torch_key`` hashes there: review it first.

Triton's ``triton_key()`` (~0.42 s on a GPU host; it hashes ``libtriton.so``) has its own memo with the same file
format and rules: triton_memo.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln import atomic_files
from torchkiln.inductor_cache.identity import _KIND, MEMO_FORMAT, InstallIdentity, install_identity

__all__ = [
    "TORCH_KEY_RANGE",
    "MemoReport",
    "memo_dir",
    "memo_path",
    "prime_torch_key",
    "read_memo",
    "report",
    "write_memo",
]

log = logging.getLogger("torchkiln.inductor_cache")

#: Torch releases whose ``torch_key`` the identity mirrors (checked on 2.11.0 and 2.13.0).
TORCH_KEY_RANGE = SpecifierSet(">=2.11.0.dev0,<2.14.0.dev0")
_MAX_MEMO_BYTES = 64 * 1024
#: A file changed this recently is racily clean: a later write in the same timestamp tick could keep its stat.
_RACY_NS = 2_000_000_000


@dataclasses.dataclass(frozen=True)
class MemoReport:
    """What :func:`prime_torch_key` did in this process.

    ``state``: ``applied`` (torch got the memo's value and will not hash), ``saved`` (no valid memo: torch hashed,
    now memoized), ``computed`` (torch hashed; not memoized, ``detail`` says why), ``already-set`` (torch had
    hashed earlier in this process), ``unavailable`` (the probe failed: the plain path, ``detail`` says why).
    """

    state: str
    detail: str
    seconds: float
    path: str | None = None


_report: MemoReport | None = None


def report() -> MemoReport | None:
    """This process's :func:`prime_torch_key` outcome, or None if it has not run."""
    return _report


# -- identity --------------------------------------------------------------------------------------------------
def memo_dir(root: Path | None = None) -> Path:
    """``<root>/v1/memo``; ``root`` defaults to the user cache dir's ``torchkiln`` (never a remote store)."""
    if root is None:
        from torchkiln.store import default_local_root

        root = default_local_root()
    from torchkiln.layout import VERSION_DIR as LAYOUT_VERSION

    return Path(root) / LAYOUT_VERSION / "memo"


def memo_path(
    torch_dir: str | os.PathLike[str], root: Path | None = None, *, prefix: str = "torch-key", suffix: str = ".json"
) -> Path:
    """The memo file of the install at ``torch_dir`` (``prefix``: ``torch-key``, ``triton-key`` for Triton's,
    ``jinja-<cache tag>`` with ``suffix`` ``.bin`` for the template memo)."""
    name = hashlib.sha256(os.path.realpath(os.fspath(torch_dir)).encode("utf-8", "surrogateescape")).hexdigest()
    return memo_dir(root) / f"{prefix}-{name[:24]}{suffix}"


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value)


def _private(st: os.stat_result) -> str | None:
    """Why a memo file or directory must not be trusted (another owner, writable by others), or None."""
    getuid = getattr(os, "getuid", None)
    if getuid is not None and st.st_uid != getuid():
        return f"owned by uid {st.st_uid}, not {getuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


class _IgnoredMemoError(Exception):
    """Why a memo file is not used (it is then recomputed and replaced)."""


def _read_private(path: Path, limit: int = _MAX_MEMO_BYTES) -> bytes:
    """The bytes of the memo file at ``path`` (at most ``limit``) when it is a private regular file of this user."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _IgnoredMemoError("no memo yet") from None
    except OSError as exc:  # ELOOP: a symbolic link
        raise _IgnoredMemoError(f"cannot open the memo: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise _IgnoredMemoError("the memo is not a small regular file")
        refused = _private(st)
        if refused:
            raise _IgnoredMemoError(f"the memo is {refused}")
        return handle.read(limit + 1)


def _is_torch_key(value: object) -> bool:
    return _is_hex(value, 64)


def _parse(raw: bytes, identity: InstallIdentity, name: str, valid: Callable[[object], bool]) -> dict[str, str]:
    try:
        memo = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _IgnoredMemoError("the memo is not JSON (corrupt)") from None
    if not isinstance(memo, dict):
        raise _IgnoredMemoError("the memo is not a JSON object (corrupt)")
    body = {k: v for k, v in memo.items() if k != "sha256"}
    if memo.get("sha256") != _checksum(body):
        raise _IgnoredMemoError("the memo's checksum does not match (corrupt)")
    if body.get("format") != MEMO_FORMAT or body.get("kind") != _KIND:
        raise _IgnoredMemoError("the memo has another format")
    if body.get("identity") != identity.digest:
        raise _IgnoredMemoError("the memo was written for another install (its files changed since)")
    values = body.get("values")
    if not isinstance(values, dict) or set(values) != {name} or not valid(values[name]):
        raise _IgnoredMemoError(f"the memo has no valid {name}")
    return {name: str(values[name])}


def read_memo(
    path: Path, identity: InstallIdentity, *, name: str = "torch_key", valid: Callable[[object], bool] = _is_torch_key
) -> tuple[dict[str, str] | None, str]:
    """(the memo's values, "") when ``path`` holds a valid memo of ``name`` for ``identity``; else (None, why not).

    ``valid`` checks the value's shape (torch_key: 64 hex digits)."""
    try:
        return _parse(_read_private(path), identity, name, valid), ""
    except _IgnoredMemoError as exc:
        return None, str(exc)


def private_dir(directory: Path) -> None:
    """Create ``directory`` (0700) if missing; PermissionError when it is another user's or writable by others."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    refused = _private(directory.stat())
    if refused:
        raise PermissionError(f"{directory} is {refused}")


def write_memo(path: Path, identity: InstallIdentity, values: dict[str, str], *, torch_version: str) -> None:
    """Atomically write the memo (0600, in a 0700 directory of this user); OSError when it cannot.

    ``torch_version``: the version of the install the memo is for (torch's, or Triton's for its memo)."""
    private_dir(path.parent)
    body: dict[str, Any] = {
        "format": MEMO_FORMAT,
        "kind": _KIND,
        "identity": identity.digest,
        "torch_version": torch_version,
        "files": identity.files,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "values": dict(values),
    }
    data = json.dumps({**body, "sha256": _checksum(body)}, sort_keys=True, indent=1).encode() + b"\n"
    # A memo is replaced when the install changes (one file per torch directory); mode 0600 like its directory.
    atomic_files.replace(path, data, temp_prefix=".memo-", temp_suffix=".tmp")


# -- the probe and the cut -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _TorchKeyHook:
    compute: Callable[[], bytes]  # torch_key itself (caches what it computes)
    set_value: Callable[[bytes], None]
    clear: Callable[[], None]
    torch_dir: str
    version: str


def _hook() -> tuple[_TorchKeyHook | None, str]:
    """(torch's ``torch_key`` and its hooks, "") when this torch can take a memo, else (None, why not)."""
    from torchkiln.compat.versions import in_range, torch_version

    if not in_range(TORCH_KEY_RANGE):
        return None, f"torch {torch_version()} is outside {TORCH_KEY_RANGE}"
    try:
        import torch
        from torch._inductor import codecache
        from torch._inductor import config as inductor_config
    except ImportError as exc:
        return None, f"cannot import torch._inductor.codecache: {exc}"
    fn = getattr(codecache, "torch_key", None)
    set_value, clear = getattr(fn, "set", None), getattr(fn, "clear", None)
    torch_dir = getattr(codecache, "_TORCH_PATH", None)
    if not (callable(fn) and callable(set_value) and callable(clear)):
        return None, "torch._inductor.codecache.torch_key has no set/clear hooks"
    if not isinstance(torch_dir, str) or not Path(torch_dir).is_dir():
        return None, "torch._inductor.codecache._TORCH_PATH is missing"
    is_fbcode = getattr(inductor_config, "is_fbcode", None)
    if callable(is_fbcode) and is_fbcode():
        return None, "fbcode's torch_key reads src_hash.txt"
    return _TorchKeyHook(fn, set_value, clear, torch_dir, str(torch.__version__)), ""


def prime_torch_key(*, root: Path | None = None) -> MemoReport:
    """Give torch its ``torch_key`` from the install memo, or let torch hash once and memoize the result.

    Call before torch's load or compile. Runs once per process (later calls return the first report). Never
    raises for a missing hook, an unreadable or foreign memo, or an unwritable cache dir: those are the plain path.
    """
    global _report
    if _report is not None:
        return _report
    start = time.perf_counter()
    hook, why = _hook()
    if hook is None:
        _report = MemoReport("unavailable", why, time.perf_counter() - start)
        log.debug("install memo unavailable: %s", why)
        return _report
    path = memo_path(hook.torch_dir, root)
    _report = _prime(hook, path, start)
    log.debug("install memo %s (%.3f s): %s", _report.state, _report.seconds, _report.detail)
    return _report


def _prime(hook: _TorchKeyHook, path: Path, start: float) -> MemoReport:
    def done(state: str, detail: str) -> MemoReport:
        return MemoReport(state, detail, time.perf_counter() - start, str(path))

    before_ns = time.time_ns()
    try:
        identity = install_identity(hook.torch_dir, hook.version)
    except OSError as exc:
        return done("unavailable", f"cannot stat the torch install: {exc}")
    values, why = read_memo(path, identity)
    if values is None:
        state, detail = _hash_and_memoize(hook, path, identity, before_ns)
        return done(state, f"{why}; {detail}")
    try:
        hook.set_value(bytes.fromhex(values["torch_key"]))
    except (RuntimeError, AssertionError):
        return done("already-set", "torch hashed its sources earlier in this process")
    return done("applied", f"{identity.files} files unchanged")


def _hash_and_memoize(hook: _TorchKeyHook, path: Path, identity: InstallIdentity, before_ns: int) -> tuple[str, str]:
    """Torch hashes (freshly: a value cached earlier in this process may predate ``identity``); memoize it when the
    files provably did not change around the hash."""
    hook.clear()
    value = hook.compute()
    try:
        after = install_identity(hook.torch_dir, hook.version)
    except OSError as exc:
        return "computed", f"cannot stat the torch install again: {exc}"
    if after.digest != identity.digest:
        return "computed", "torch's files changed while it hashed them: not memoized"
    if identity.newest_change_ns >= before_ns - _RACY_NS:
        return "computed", "a torch file changed in the last 2 s: not memoized"
    try:
        write_memo(path, identity, {"torch_key": value.hex()}, torch_version=hook.version)
    except OSError as exc:
        log.info("cannot write the install memo %s: %s", path, exc)
        return "computed", f"cannot write the memo: {exc}"
    return "saved", f"memoized in {path.name}"
