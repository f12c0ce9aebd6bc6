"""The install memo of Triton's source-tree hash, ``triton_key()``.

``triton.runtime.cache.triton_key()`` hashes Triton's frontend, compiler, backends and language modules and the
whole ``libtriton`` shared library (~0.42 s on a GPU host per issue 12) once per process, whenever Triton keys a
kernel (``get_cache_key``: every ``triton.compile``, which a GPU hit's restored kernels go through), Triton's
autotuner keys its results, or Inductor reads its system info (``CacheBase.get_system``) or forks its compile
workers (``async_compile.pre_fork_setup``): on every GPU load and on every compile of a process where Triton is
installed (torch 2.11, CPU or GPU). A CPU hit never calls it (``benchmarks/results/cpu211-profile-hit-*.txt``).

The value changes only with those files, so :func:`prime_triton_key` hands Triton a memoized value. Unlike
``torch_key`` it has no pre-population hook: it is a plain ``functools.lru_cache``, bound by name in
``triton.runtime.cache`` (whose ``get_cache_key`` calls it by its global name), ``triton.runtime.autotuner``
(``from .cache import triton_key``) and torch's ``torch._inductor.runtime.triton_compat`` (which every torch caller
reads at call time). The cut rebinds that name, in every loaded ``triton``/``torch`` module that holds the very
function, to a function returning the memoized value; modules imported later take the rebound name from
``triton.runtime.cache``. :func:`revert_triton_key` puts the original back.

Identity: :func:`identity.tree_identity` of Triton's package directory (every file below it: path, size, mtime,
ctime, inode, device; a superset of what ``triton_key`` reads), its dist-info ``RECORD``, Triton's version and the
interpreter's extension suffix (which picks the ``libtriton`` file). A memo is saved only when the identity is the
same before and after Triton hashed and no file changed in the 2 s before (racily clean), as for ``torch_key``. The
memo lives beside torch's (``<user cache dir>/torchkiln/v1/memo/triton-key-<24 hex of the triton dir>.json``) with
the same validation (memo.py); the value must start with Triton's version followed by ``-``-joined sha256 digests.

Probe, like a forward fix: only where torch is in ``TORCH_KEY_RANGE``, Triton in :data:`TRITON_KEY_RANGE` (checked
on 3.6.0, the one torch 2.11 pins), ``triton.runtime.cache.triton_key`` is an ``lru_cache`` wrapping a function of
that module, torch's ``triton_compat.triton_key`` is that same function, and ``libtriton`` is where ``triton_key``
opens it. Otherwise the plain path (Triton hashes, as without torchkiln); never an ImportError.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from torchkiln.inductor_cache.identity import InstallIdentity, tree_identity
from torchkiln.inductor_cache.memo import _RACY_NS, MemoReport, memo_path, read_memo, write_memo

__all__ = ["TRITON_KEY_RANGE", "prime_triton_key", "revert_triton_key", "triton_report"]

log = logging.getLogger("torchkiln.inductor_cache")

#: Triton releases whose ``triton_key`` the probe and the identity were checked against.
TRITON_KEY_RANGE = SpecifierSet(">=3.6.0.dev0,<3.7.0.dev0")
#: Roots of the modules that may hold the function under the name ``triton_key``.
_BINDING_ROOTS = ("triton", "torch")
_MAX_VALUE = 48 * 1024

_report: MemoReport | None = None
#: (module, the original function) for every binding the cut replaced; empty when not applied.
_patched: list[tuple[ModuleType, Any]] = []


def triton_report() -> MemoReport | None:
    """This process's :func:`prime_triton_key` outcome, or None if it has not run."""
    return _report


@dataclasses.dataclass(frozen=True)
class _TritonKeyHook:
    function: Any  # triton.runtime.cache.triton_key (an lru_cache)
    triton_dir: str
    version: str
    ext_suffix: str


def _valid_value(version: str) -> Callable[[object], bool]:
    digests = re.compile(r"[0-9a-f]{64}(-[0-9a-f]{64})*")

    def valid(value: object) -> bool:
        return (
            isinstance(value, str)
            and len(value) <= _MAX_VALUE
            and value.startswith(version)
            and bool(digests.fullmatch(value[len(version) :]))
        )

    return valid


def _hook() -> tuple[_TritonKeyHook | None, str]:
    """(Triton's ``triton_key`` and where it reads, "") when the cut applies here, else (None, why not)."""
    from torchkiln.compat.versions import in_range, torch_version
    from torchkiln.inductor_cache.memo import TORCH_KEY_RANGE

    if not in_range(TORCH_KEY_RANGE):
        return None, f"torch {torch_version()} is outside {TORCH_KEY_RANGE}"
    try:
        import triton
        from torch._inductor.runtime import triton_compat
        from triton.runtime import cache as triton_cache
    except ImportError as exc:
        return None, f"triton is not importable: {exc}"
    version = str(getattr(triton, "__version__", ""))
    fn = getattr(triton_cache, "triton_key", None)
    triton_dir = Path(str(triton_cache.__file__)).resolve().parent.parent
    ext = str(sysconfig.get_config_var("EXT_SUFFIX") or "").split(".")[-1]
    why = _refusal(version, fn, triton_cache, triton_compat) or (
        "" if ext and (triton_dir / "_C" / f"libtriton.{ext}").is_file() else f"no libtriton.{ext} in {triton_dir}/_C"
    )
    if why:
        return None, why
    return _TritonKeyHook(fn, str(triton_dir), version, ext), ""


def _refusal(version: str, fn: Any, triton_cache: ModuleType, triton_compat: ModuleType) -> str:
    """Why this Triton's ``triton_key`` is not the one the cut was checked against ("" when it is)."""
    try:
        if Version(version) not in TRITON_KEY_RANGE:
            return f"triton {version} is outside {TRITON_KEY_RANGE}"
    except InvalidVersion:
        return f"cannot parse the triton version {version!r}"
    if not (callable(getattr(fn, "cache_info", None)) and callable(getattr(fn, "cache_clear", None))):
        return "triton.runtime.cache.triton_key is not an lru_cache"
    code = getattr(getattr(fn, "__wrapped__", None), "__code__", None)
    if getattr(code, "co_filename", None) != triton_cache.__file__:
        return "triton.runtime.cache.triton_key is not triton's own function"
    if getattr(triton_compat, "triton_key", None) is not fn:
        return "torch's triton_compat.triton_key is another function"
    return ""


def _identity(hook: _TritonKeyHook) -> InstallIdentity:
    return tree_identity(hook.triton_dir, hook.version, extra=(f"ext\0{hook.ext_suffix}", f"python\0{sys.version}"))


def prime_triton_key(*, root: Path | None = None) -> MemoReport:
    """Give Triton its ``triton_key`` from the install memo, or let Triton hash once and memoize the result.

    Call before torch's load of a GPU artifact or any compile. Runs once per process (later calls return the
    first report). Never raises: a missing or changed Triton, an unreadable or foreign memo, an unwritable cache
    dir are the plain path.
    """
    global _report
    if _report is not None:
        return _report
    start = time.perf_counter()
    hook, why = _hook()
    if hook is None:
        _report = MemoReport("unavailable", why, time.perf_counter() - start)
    else:
        _report = _prime(hook, memo_path(hook.triton_dir, root, prefix="triton-key"), start)
    log.debug("triton install memo %s (%.3f s): %s", _report.state, _report.seconds, _report.detail)
    return _report


def _prime(hook: _TritonKeyHook, path: Path, start: float) -> MemoReport:
    def done(state: str, detail: str) -> MemoReport:
        return MemoReport(state, detail, time.perf_counter() - start, str(path))

    if hook.function.cache_info().currsize:
        return done("already-set", "triton hashed its sources earlier in this process")
    before_ns = time.time_ns()
    try:
        identity = _identity(hook)
    except OSError as exc:
        return done("unavailable", f"cannot stat the triton install: {exc}")
    valid = _valid_value(hook.version)
    values, why = read_memo(path, identity, name="triton_key", valid=valid)
    if values is None:
        state, detail = _hash_and_memoize(hook, path, identity, before_ns, valid)
        return done(state, f"{why}; {detail}")
    n = _rebind(hook.function, values["triton_key"])
    return done("applied", f"{identity.files} files unchanged; {n} bindings")


def _hash_and_memoize(
    hook: _TritonKeyHook, path: Path, identity: InstallIdentity, before_ns: int, valid: Callable[[object], bool]
) -> tuple[str, str]:
    value = hook.function()  # Triton's own hash (lru-cached in this process from now on)
    try:
        after = _identity(hook)
    except OSError as exc:
        return "computed", f"cannot stat the triton install again: {exc}"
    if after.digest != identity.digest:
        return "computed", "triton's files changed while it hashed them: not memoized"
    if identity.newest_change_ns >= before_ns - _RACY_NS:
        return "computed", "a triton file changed in the last 2 s: not memoized"
    if not valid(value):
        return "computed", "triton_key() returned a value of another shape: not memoized"
    try:
        write_memo(path, identity, {"triton_key": value}, torch_version=hook.version)
    except OSError as exc:
        log.info("cannot write the triton install memo %s: %s", path, exc)
        return "computed", f"cannot write the memo: {exc}"
    return "saved", f"memoized in {path.name}"


def _rebind(original: Any, value: str) -> int:
    """Replace every binding of ``original`` named ``triton_key`` in loaded triton/torch modules."""

    @functools.cache
    def triton_key() -> str:
        return value

    triton_key.__module__ = original.__module__
    triton_key.__qualname__ = "triton_key"
    triton_key.__doc__ = "torchkiln: triton_key() from the install memo (inductor_cache/triton_memo.py)."
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(_BINDING_ROOTS):
            continue
        try:
            bound = vars(module).get("triton_key")
        except TypeError:  # a module object without a __dict__
            continue
        if bound is original:
            module.triton_key = triton_key  # type: ignore[attr-defined]
            _patched.append((module, original))
    return len(_patched)


def revert_triton_key() -> None:
    """Put the original ``triton_key`` back everywhere the cut rebound it, and forget this process's report."""
    global _report
    while _patched:
        module, original = _patched.pop()
        module.triton_key = original  # type: ignore[attr-defined]
    _report = None
