"""The memo of Inductor's compiled Jinja templates: what a hit's imports spend compiling the same text every time.

Importing ``torch._inductor.select_algorithm`` (every generated output module does, through ``extern_kernels``)
imports Inductor's kernel modules, and each of those builds its ``TritonTemplate``s at module level:
``KernelTemplate._template_from_string`` -> ``jinja2_env().from_string(source)`` -> Jinja's lexer, parser, code
generator and Python's ``compile`` for ~20 template texts that only change with torch. Measured on the 2-core CPU
box (torch 2.13, collector paused): 0.26-0.37 s of the ~1.3 s that importing ``select_algorithm`` and ``graph``
takes; with this memo that import took 0.67-0.95 s instead of 1.22-1.36 s (BENCHMARKS.md, "Template memo").

The cut: Inductor's one environment (``torch._inductor.codegen.common.jinja2_env()``, a ``functools.cache``) gets
a subclass of its own class whose ``compile`` looks the template up first: ``from_string(source)`` is
``template_class.from_code(env, env.compile(source), ...)`` in Jinja 3.0-3.1, and only that call (a ``str`` source,
no name, file name, ``raw`` or ``defer_init``) is memoized; everything else goes to Jinja. What ``compile`` returns
(a Python code object) is a deterministic function of the source, the environment's settings and Jinja and Python
themselves (checked: byte-identical across hash seeds), so an entry's key is a sha256 over the source and a
fingerprint of every environment setting Jinja's lexer, parser and code generator read (delimiters, whitespace
options, ``optimized``, ``is_async``, ``autoescape``, ``finalize``, ``undefined``, extensions, and each filter and
test by name, qualified name and pass-argument flag), computed at each call; and the file is valid for one Jinja
install (:func:`identity.tree_identity`: every file of the package, its version, its ``RECORD``) under one Python
bytecode format (cache tag, magic number, ``-O`` level). Same key, same code: a memo can only be used or missed.

Where: ``<user cache dir>/torchkiln/v1/memo/jinja-<cache tag>-<24 hex of the jinja dir>.bin`` (local only). Format:
a magic line, a JSON header line (identity, entry count, sha256 of the payload), then the payload, ``marshal`` of a
dict {key: code object}, as Jinja's own ``BytecodeCache`` stores templates. A code object runs when the template
renders, so the file gets a ``.pyc``'s trust and the install memo's checks (memo.py): a private regular file of
this user in a 0700 directory, at most 16 MiB, its payload's checksum and the identity matching; anything else is
ignored and rebuilt. Written atomically, only when a process compiled a template the memo lacked (the first hit or
compile of an install), only when Jinja's files did not change in the 2 s before.

``TORCHKILN_TEMPLATE_MEMO=0`` turns the cut off. Probe: Jinja in :data:`JINJA_RANGE` (checked on 3.1.6),
``jinja2_env`` a function of ``torch._inductor.codegen.common`` returning exactly a ``jinja2.Environment`` (torch
2.11 and 2.13). Otherwise the plain path: Jinja compiles, as without torchkiln. ``memoize_templates`` is called on
the load path before torch imports its kernel modules (``loader.prepare_load``, preload's imports right after
``codecache``) and by a compile; ``save_templates`` after each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import marshal
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet

from torchkiln import atomic_files
from torchkiln.inductor_cache.identity import InstallIdentity, tree_identity
from torchkiln.inductor_cache.memo import _RACY_NS, _IgnoredMemoError, _read_private, memo_path, private_dir

__all__ = ["JINJA_RANGE", "TemplateMemoReport", "memoize_templates", "save_templates", "template_report"]

log = logging.getLogger("torchkiln.inductor_cache")

#: Jinja releases whose ``from_string`` -> ``compile`` path the cut was checked against.
JINJA_RANGE = SpecifierSet(">=3.0,<3.2")
_MAGIC = b"torchkiln-jinja-memo 1\n"
_MAX_BYTES = 16 * 1024 * 1024
_MAX_ENTRIES = 4096
#: The environment settings Jinja's lexer, parser, optimizer and code generator read (jinja2 3.1: compiler.py,
#: parser.py, lexer.py); filters, tests and extensions are added by :func:`_fingerprint`.
_ENV_SETTINGS = (
    "block_start_string",
    "block_end_string",
    "variable_start_string",
    "variable_end_string",
    "comment_start_string",
    "comment_end_string",
    "line_statement_prefix",
    "line_comment_prefix",
    "trim_blocks",
    "lstrip_blocks",
    "newline_sequence",
    "keep_trailing_newline",
    "optimized",
    "is_async",
    "sandboxed",
    "autoescape",
    "finalize",
    "undefined",
    "code_generator_class",
    "context_class",
    "template_class",
    "concat",
    "intercepted_binops",
    "intercepted_unops",
)


@dataclasses.dataclass(frozen=True)
class TemplateMemoReport:
    """What :func:`memoize_templates` did: ``state`` ``applied`` (the memo's entries are served), ``empty`` (no
    valid memo yet: ``detail`` says why; what is compiled now is saved), ``unavailable`` (the probe failed: the
    plain path)."""

    state: str
    detail: str
    seconds: float
    entries: int = 0
    path: str | None = None


@dataclasses.dataclass
class _Memo:
    path: Path
    jinja_dir: str
    jinja_version: str
    identity: InstallIdentity
    identity_ns: int  # when the identity was taken: a file changed less than 2 s before it is racily clean
    codes: dict[str, types.CodeType]
    added: dict[str, types.CodeType] = dataclasses.field(default_factory=dict)  # not saved yet
    served: int = 0
    compiled: int = 0


_lock = threading.Lock()
_memo: _Memo | None = None
_report: TemplateMemoReport | None = None


def template_report() -> dict[str, Any] | None:
    """This process's outcome (the report, and how many templates were served and compiled), or None."""
    if _report is None:
        return None
    served, compiled = (0, 0) if _memo is None else (_memo.served, _memo.compiled)
    return {**dataclasses.asdict(_report), "served": served, "compiled": compiled}


# -- the key ---------------------------------------------------------------------------------------------------
def _describe(value: Any) -> str:
    """A process-independent description of a setting: the value of a plain one, the qualified name and Jinja's
    pass-argument flag of a callable or class (never an ``id``)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return repr(value)
    if isinstance(value, (frozenset, set, tuple, list)):
        return repr(sorted(_describe(v) for v in value))
    module = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{module}.{qualname}/{getattr(value, 'jinja_pass_arg', None)!r}"


def _fingerprint(env: Any) -> str:
    """Every environment setting the compiled code depends on, hashed (read at each call: torch adds a filter
    right before it compiles)."""
    base = type(env).__mro__[1] if getattr(type(env), "_torchkiln_memo", False) else type(env)
    parts = [f"class={_describe(base)}"]
    parts += [f"{name}={_describe(getattr(env, name, None))}" for name in _ENV_SETTINGS]
    parts.append("extensions=" + repr(sorted(getattr(env, "extensions", {}))))
    for table in ("filters", "tests"):
        parts += [f"{table}:{name}={_describe(fn)}" for name, fn in sorted(getattr(env, table).items())]
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def _entry_key(env: Any, source: str) -> str:
    digest = hashlib.sha256(_fingerprint(env).encode())
    digest.update(b"\0")
    digest.update(source.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _memoized(env: Any, source: str, compile_source: Any) -> types.CodeType:
    memo = _memo
    if memo is None:
        code: types.CodeType = compile_source()
        return code
    key = _entry_key(env, source)
    found = memo.codes.get(key)
    if found is not None:
        memo.served += 1
        return found
    code = compile_source()
    if isinstance(code, types.CodeType):
        # No lock: this runs inside imports (preload's thread holds the interpreter's import lock there), and a
        # dict assignment is atomic; the counter is a report.
        memo.codes[key] = memo.added[key] = code
        memo.compiled += 1
    return code


_subclasses: dict[type, type] = {}


def _memoizing_class(base: type) -> type:
    """``base`` with a ``compile`` that serves the memo for ``from_string``'s call and defers everything else."""
    cls = _subclasses.get(base)
    if cls is None:

        class MemoizedEnvironment(base):  # type: ignore[misc]
            _torchkiln_memo = True

            def compile(
                self, source: Any, name: Any = None, filename: Any = None, raw: bool = False, defer_init: bool = False
            ) -> Any:
                if isinstance(source, str) and name is None and filename is None and not raw and not defer_init:
                    return _memoized(self, source, lambda: super(MemoizedEnvironment, self).compile(source))
                return super().compile(source, name, filename, raw, defer_init)

        MemoizedEnvironment.__qualname__ = f"torchkiln.{base.__qualname__}"
        cls = _subclasses[base] = MemoizedEnvironment
    return cls


# -- the file --------------------------------------------------------------------------------------------------
def _python_facts() -> str:
    magic = importlib.util.MAGIC_NUMBER.hex()
    return f"python {sys.implementation.cache_tag} magic {magic} optimize {sys.flags.optimize}"


def memo_file(jinja_dir: str, root: Path | None = None) -> Path:
    """The memo of the Jinja installed at ``jinja_dir`` for this interpreter (named like the install memos)."""
    return memo_path(jinja_dir, root, prefix=f"jinja-{sys.implementation.cache_tag}", suffix=".bin")


def _read(path: Path, identity: InstallIdentity) -> dict[str, types.CodeType]:
    raw = _read_private(path, _MAX_BYTES)
    if not raw.startswith(_MAGIC):
        raise _IgnoredMemoError("the memo has another format")
    end = raw.find(b"\n", len(_MAGIC))
    try:
        header = json.loads(raw[len(_MAGIC) : end].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _IgnoredMemoError("the memo's header is not JSON (corrupt)") from None
    if end < 0 or not isinstance(header, dict):
        raise _IgnoredMemoError("the memo's header is not JSON (corrupt)")
    if header.get("identity") != identity.digest:
        raise _IgnoredMemoError("the memo was written for another Jinja or Python (their files changed since)")
    payload = raw[end + 1 :]
    if header.get("payload_sha256") != hashlib.sha256(payload).hexdigest():
        raise _IgnoredMemoError("the memo's checksum does not match (corrupt)")
    try:
        codes = marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        raise _IgnoredMemoError("the memo's payload does not load (corrupt)") from None
    if not isinstance(codes, dict) or not all(
        isinstance(k, str) and len(k) == 64 and isinstance(v, types.CodeType) for k, v in codes.items()
    ):
        raise _IgnoredMemoError("the memo's payload is not a table of code objects")
    return codes


def _write(path: Path, identity: InstallIdentity, codes: dict[str, types.CodeType]) -> None:
    payload = marshal.dumps(dict(sorted(codes.items())))
    header = {
        "identity": identity.digest,
        "files": identity.files,
        "python": _python_facts(),
        "entries": len(codes),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data = _MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + payload
    if len(data) > _MAX_BYTES:
        raise OSError(f"the memo would be {len(data)} bytes, more than {_MAX_BYTES}")
    private_dir(path.parent)
    atomic_files.replace(path, data, temp_prefix=".memo-", temp_suffix=".tmp")


# -- the probe and the cut -------------------------------------------------------------------------------------
def _jinja_identity(jinja_dir: str, version: str) -> InstallIdentity:
    return tree_identity(jinja_dir, version, extra=(_python_facts(),))


def _jinja() -> tuple[Any, str]:
    """(the jinja2 module, "") when its release is one the cut was checked against, else (None, why not)."""
    try:
        import jinja2
    except ImportError:
        return None, "Jinja is not installed (Inductor builds no templates)"
    from packaging.version import InvalidVersion, Version

    try:
        version = Version(jinja2.__version__)
    except (InvalidVersion, AttributeError):
        return None, "Jinja's version is unreadable"
    if version not in JINJA_RANGE:
        return None, f"Jinja {version} is outside {JINJA_RANGE}"
    return jinja2, ""


def _probe() -> tuple[Any, Any, str]:
    """(Inductor's environment, the jinja2 module, "") when the cut applies, else (None, None, why not)."""
    jinja2, why = _jinja()
    if jinja2 is None:
        return None, None, why
    try:
        import torch._inductor.codecache  # noqa: F401 - the hit's own order: codecache imports codegen.common
        from torch._inductor.codegen import common
    except ImportError as exc:
        return None, None, f"cannot import torch._inductor.codegen.common: {exc}"
    factory = getattr(common, "jinja2_env", None)
    if not callable(factory):
        return None, None, "torch._inductor.codegen.common.jinja2_env is missing"
    env = factory()
    if type(env) is not jinja2.Environment and not getattr(type(env), "_torchkiln_memo", False):
        return None, None, f"Inductor's Jinja environment is a {type(env).__qualname__}, not jinja2.Environment"
    return env, jinja2, ""


def memoize_templates(*, root: Path | None = None) -> TemplateMemoReport:
    """Serve Inductor's Jinja templates from the memo from now on (and record what is compiled); once per process.

    Never raises for a missing probe, an unreadable or foreign memo: those are the plain path or an empty memo.
    """
    global _memo, _report
    with _lock:
        if _report is not None:
            return _report
        from torchkiln import settings

        if not settings.template_memo_requested():
            _report = TemplateMemoReport("unavailable", f"{settings.ENV_TEMPLATE_MEMO} is off", 0.0)
            return _report
        env, jinja2, why = _probe()  # imports Inductor's codecache where the caller has not yet: not timed
        start = time.perf_counter()
        if env is None:
            _report = TemplateMemoReport("unavailable", why, time.perf_counter() - start)
            log.debug("template memo unavailable: %s", why)
            return _report
        jinja_dir, version = str(Path(jinja2.__file__).resolve().parent), str(jinja2.__version__)
        path = memo_file(jinja_dir, root)
        taken_ns = time.time_ns()
        try:
            identity = _jinja_identity(jinja_dir, version)
        except OSError as exc:
            _report = TemplateMemoReport("unavailable", f"cannot stat Jinja: {exc}", time.perf_counter() - start)
            return _report
        try:
            codes, state, detail = _read(path, identity), "applied", ""
        except _IgnoredMemoError as exc:
            codes, state, detail = {}, "empty", str(exc)
        _memo = _Memo(path, jinja_dir, version, identity, taken_ns, codes)
        if type(env) is jinja2.Environment:  # not yet swapped (a second call after a reload finds it swapped)
            env.__class__ = _memoizing_class(jinja2.Environment)
        detail = detail or f"{len(codes)} templates"
        _report = TemplateMemoReport(state, detail, time.perf_counter() - start, len(codes), str(path))
        log.debug("template memo %s (%.3f s): %s", state, _report.seconds, detail)
        return _report


def save_templates() -> str:
    """Write the memo when this process compiled templates it lacked; what happened, in words. Never raises."""
    memo = _memo
    if memo is None or not memo.added:
        return "nothing to save"
    added, memo.added = memo.added, {}  # one swap: an entry added meanwhile goes to the new dict, saved next time
    codes = dict(memo.codes)
    if len(codes) > _MAX_ENTRIES:
        return f"not saved: {len(codes)} templates, more than {_MAX_ENTRIES}"
    if memo.identity.newest_change_ns >= memo.identity_ns - _RACY_NS:
        return "not saved: a Jinja file changed in the 2 s before"
    try:
        now = _jinja_identity(memo.jinja_dir, memo.jinja_version)
        if now.digest != memo.identity.digest:
            return "not saved: Jinja's files changed meanwhile"
        _write(memo.path, memo.identity, codes)
    except OSError as exc:
        log.info("cannot write the template memo %s: %s", memo.path, exc)
        return f"not saved: {exc}"
    log.debug("template memo: saved %d new of %d templates in %s", len(added), len(codes), memo.path.name)
    return f"saved {len(added)} new of {len(codes)}"
