"""Every ``TORCHKILN_*`` environment variable: its name, its default, its parser, and the one error a bad value gets.

Nothing else in torchkiln reads ``os.environ`` for its own settings. ``current()`` parses and validates all of them
at once, so a bad value fails *before* any work (issue 11: an empty ``TORCHKILN_SIGNING_KEY`` used to cost a full
compile and then crash at publish; ``TORCHKILN_LOCK_TIMEOUT=10m`` was a raw ``ValueError``, and only on a miss).
Every problem is a ``ConfigError`` that says which variable, what is wrong with it and how to fix it; several bad
values are reported together.

The signing-key rules live here too (``TORCHKILN_SIGNING_KEY`` / ``TORCHKILN_SIGNING_KEY_FILE``): setting both, or
either to an empty value, is an error rather than "no key", because a CI secret that expands to nothing must not
silently turn signature checks off.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from typing import TypeVar

from torchkiln.errors import ConfigError

__all__ = [
    "DEFAULT_LEASE_TTL",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_REMOTE_TIMEOUT",
    "ENV_CACHE",
    "ENV_CUDA_WARM",
    "ENV_GC_PAUSE",
    "ENV_TEMPLATE_MEMO",
    "ENV_INSTALL",
    "ENV_LEASE_TTL",
    "ENV_LOCK_TIMEOUT",
    "ENV_LOG",
    "ENV_REMOTE_TIMEOUT",
    "ENV_SIGNING_KEY",
    "ENV_SIGNING_KEY_FILE",
    "ENV_STRICT",
    "VARIABLES",
    "Settings",
    "cache_url",
    "configure_logging",
    "cuda_warm_requested",
    "current",
    "gc_pause_requested",
    "template_memo_requested",
    "install_requested",
    "parse_duration",
    "signing_key",
]

ENV_CACHE = "TORCHKILN_CACHE"
ENV_SIGNING_KEY = "TORCHKILN_SIGNING_KEY"
ENV_SIGNING_KEY_FILE = "TORCHKILN_SIGNING_KEY_FILE"
ENV_STRICT = "TORCHKILN_STRICT"
ENV_LOG = "TORCHKILN_LOG"
ENV_LOCK_TIMEOUT = "TORCHKILN_LOCK_TIMEOUT"
ENV_REMOTE_TIMEOUT = "TORCHKILN_REMOTE_TIMEOUT"
ENV_LEASE_TTL = "TORCHKILN_LEASE_TTL"
ENV_INSTALL = "TORCHKILN_INSTALL"
ENV_GC_PAUSE = "TORCHKILN_GC_PAUSE"
ENV_CUDA_WARM = "TORCHKILN_CUDA_WARM"
ENV_TEMPLATE_MEMO = "TORCHKILN_TEMPLATE_MEMO"

#: Seconds a process waits for another process compiling the same key before it compiles itself.
DEFAULT_LOCK_TIMEOUT = 900.0
#: A bounded wait of at most 30 s on any one remote call before the local tier carries on alone.
DEFAULT_REMOTE_TIMEOUT = 30.0
#: Seconds a fleet-wide compile lease lives without a heartbeat (a dead machine's lease expires after this).
DEFAULT_LEASE_TTL = 60.0

#: Every variable -> what it means (``torchkiln doctor`` and docs/CACHE.md list them from here).
VARIABLES: dict[str, str] = {
    ENV_CACHE: "the cache: a directory, file://, memory://NAME or s3://BUCKET/PREFIX (default: the user cache dir)",
    ENV_SIGNING_KEY: "HMAC key (text); when set, unsigned or foreign-signed artifacts are refused",
    ENV_SIGNING_KEY_FILE: "a file (mode 600) holding the HMAC key; the alternative to TORCHKILN_SIGNING_KEY",
    ENV_STRICT: "1: raise the typed error instead of falling back to a compile",
    ENV_LOG: "debug, info, warning or error: torchkiln's log level on stderr",
    ENV_LOCK_TIMEOUT: f"wait for another process compiling the same key (default {DEFAULT_LOCK_TIMEOUT:g} s)",
    ENV_REMOTE_TIMEOUT: f"deadline of one remote-store call (default {DEFAULT_REMOTE_TIMEOUT:g} s)",
    ENV_LEASE_TTL: f"lifetime of a fleet compile lease without a heartbeat (default {DEFAULT_LEASE_TTL:g} s)",
    ENV_INSTALL: "1: route torch.compile through torchkiln from interpreter start (set by `torchkiln run` for the "
    "program and its child processes; 0 turns it off there)",
    ENV_GC_PAUSE: "0: keep Python's garbage collector running while a hit imports and loads (default 1: paused, "
    "which makes the load faster; docs/STARTUP.md)",
    ENV_CUDA_WARM: "0: leave cuBLAS's start to a CUDA hit's first call (default 1: paid on a background thread while "
    "the artifact loads; docs/STARTUP.md)",
    ENV_TEMPLATE_MEMO: "0: let Jinja compile Inductor's kernel templates in every process (default 1: compiled once "
    "per install and kept in the local memo; docs/STARTUP.md)",
}

T = TypeVar("T")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "WARN": logging.WARNING}
_LEVELS |= {"ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
_DURATION = re.compile(r"\s*(?P<number>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>ms|s|m|min|h)?\s*", re.ASCII)
_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings of this process (``current()``); ``signing_key`` is kept out of ``repr``."""

    cache: str | None = None
    signing_key: bytes | None = dataclasses.field(default=None, repr=False)
    strict: bool = False
    log_level: int | None = None
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    remote_timeout: float = DEFAULT_REMOTE_TIMEOUT
    lease_ttl: float = DEFAULT_LEASE_TTL
    install: bool = False
    gc_pause: bool = True
    cuda_warm: bool = True
    template_memo: bool = True


def current(environ: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate every variable (``environ`` defaults to ``os.environ``).

    Raises one ``ConfigError`` that names every bad variable, so a user fixes them all in one go.
    """
    env = os.environ if environ is None else environ
    problems: list[ConfigError] = []

    def attempt(parse: Callable[[], T], fallback: T) -> T:
        try:
            return parse()
        except ConfigError as exc:
            problems.append(exc)
            return fallback

    settings = Settings(
        cache=attempt(lambda: _cache(env.get(ENV_CACHE)), None),
        signing_key=attempt(lambda: signing_key(env), None),
        strict=attempt(lambda: _flag(ENV_STRICT, env.get(ENV_STRICT)), False),
        log_level=attempt(lambda: _log_level(env.get(ENV_LOG)), None),
        lock_timeout=attempt(lambda: _seconds(ENV_LOCK_TIMEOUT, env, DEFAULT_LOCK_TIMEOUT, allow_zero=True), 0.0),
        remote_timeout=attempt(lambda: _seconds(ENV_REMOTE_TIMEOUT, env, DEFAULT_REMOTE_TIMEOUT), 0.0),
        lease_ttl=attempt(lambda: _seconds(ENV_LEASE_TTL, env, DEFAULT_LEASE_TTL), 0.0),
        install=attempt(lambda: install_requested(env), False),
        gc_pause=attempt(lambda: gc_pause_requested(env), True),
        cuda_warm=attempt(lambda: cuda_warm_requested(env), True),
        template_memo=attempt(lambda: template_memo_requested(env), True),
    )
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigError(
            f"{len(problems)} torchkiln settings are invalid: " + "; ".join(p.what for p in problems),
            where=", ".join(p.where or "?" for p in problems),
            fix="; ".join(p.fix or "" for p in problems),
        )
    return settings


def install_requested(environ: Mapping[str, str] | None = None) -> bool:
    """``TORCHKILN_INSTALL`` alone (what the interpreter-start hook reads before anything else), validated."""
    return _flag(ENV_INSTALL, (os.environ if environ is None else environ).get(ENV_INSTALL))


def gc_pause_requested(environ: Mapping[str, str] | None = None) -> bool:
    """``TORCHKILN_GC_PAUSE`` alone (read on the load path, gc_pause.py), validated; on unless set to off."""
    return _default_on(ENV_GC_PAUSE, environ)


def cuda_warm_requested(environ: Mapping[str, str] | None = None) -> bool:
    """``TORCHKILN_CUDA_WARM`` alone (read on the load path, cuda_warm.py), validated; on unless set to off."""
    return _default_on(ENV_CUDA_WARM, environ)


def template_memo_requested(environ: Mapping[str, str] | None = None) -> bool:
    """``TORCHKILN_TEMPLATE_MEMO`` alone (read where Inductor's templates are memoized: template_memo.py),
    validated; on unless set to off."""
    return _default_on(ENV_TEMPLATE_MEMO, environ)


def _default_on(name: str, environ: Mapping[str, str] | None) -> bool:
    raw = (os.environ if environ is None else environ).get(name)
    return True if raw is None or not raw.strip() else _flag(name, raw)


def cache_url(environ: Mapping[str, str] | None = None) -> str | None:
    """``TORCHKILN_CACHE`` alone (what ``open_store`` needs), validated like ``current()`` does."""
    return _cache((os.environ if environ is None else environ).get(ENV_CACHE))


def parse_duration(text: str) -> float | None:
    """Seconds from ``"30"``, ``"30s"``, ``"1.5m"``, ``"2h"``, ``"500ms"``; None when ``text`` is not one."""
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    return seconds if math.isfinite(seconds) else None


def _seconds(name: str, env: Mapping[str, str], default: float, *, allow_zero: bool = False) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    seconds = parse_duration(raw)
    if seconds is None or seconds < 0 or (seconds == 0 and not allow_zero):
        floor = "zero or more" if allow_zero else "a positive number of"
        raise ConfigError(
            f"{name}={raw!r} is not {floor} seconds",
            where=name,
            fix=f"set {name} to e.g. 10, 90s or 15m, or unset it for the default of {default:g} s",
        )
    return seconds


def _flag(name: str, raw: str | None) -> bool:
    value = (raw or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is neither on nor off", where=name, fix=f"set {name}=1 (on) or 0 (off)")


def _log_level(raw: str | None) -> int | None:
    value = (raw or "").strip().upper()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    if value in _LEVELS:
        return _LEVELS[value]
    raise ConfigError(
        f"{ENV_LOG}={raw!r} is not a log level", where=ENV_LOG, fix=f"set {ENV_LOG} to debug, info, warning or error"
    )


def _cache(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if raw != raw.strip():
        # TORCHKILN_CACHE=' ' used to create a directory named ' ' (issue 11): a stray space is a typo, not a path.
        raise ConfigError(
            f"{ENV_CACHE}={raw!r} begins or ends with whitespace",
            where=ENV_CACHE,
            fix=f"set {ENV_CACHE} to the directory or URL without the spaces, or unset it for the user cache dir",
        )
    return raw


def signing_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The HMAC key from ``TORCHKILN_SIGNING_KEY`` (UTF-8 text) or ``TORCHKILN_SIGNING_KEY_FILE`` (a path).

    None when neither is set. The key file must not be readable or writable by group or others (POSIX), and one
    trailing newline (``\\n`` or ``\\r\\n``) is removed from it so ``echo secret > key`` works.
    """
    env = os.environ if environ is None else environ
    text = env.get(ENV_SIGNING_KEY)
    path = env.get(ENV_SIGNING_KEY_FILE)
    if text is not None and path is not None:
        raise ConfigError(
            f"both {ENV_SIGNING_KEY} and {ENV_SIGNING_KEY_FILE} are set",
            where=f"{ENV_SIGNING_KEY}, {ENV_SIGNING_KEY_FILE}",
            fix="unset one of them",
        )
    if text is not None:
        if not text:
            raise ConfigError(
                f"{ENV_SIGNING_KEY} is set but empty",
                where=ENV_SIGNING_KEY,
                fix=f"set {ENV_SIGNING_KEY} to the fleet's secret key (32+ random bytes), or unset it to accept "
                "unsigned artifacts",
            )
        # os.environ carries undecodable bytes as lone surrogates; surrogateescape gives the bytes back.
        return text.encode("utf-8", "surrogateescape")
    if path is not None:
        return _read_key_file(path)
    return None


def _read_key_file(path: str) -> bytes:
    fix_read = f"point {ENV_SIGNING_KEY_FILE} at a readable file that holds the key"
    where = f"{ENV_SIGNING_KEY_FILE}={path}"
    if not path:
        raise ConfigError(f"{ENV_SIGNING_KEY_FILE} is set but empty", where=ENV_SIGNING_KEY_FILE, fix=fix_read)
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError("signing key file is not a regular file", where=where, fix=fix_read)
            # The check is made on the opened file (fstat), so the file that is read is the one checked.
            if os.name == "posix" and stat.S_IMODE(mode) & 0o077:
                raise ConfigError(
                    f"signing key file is accessible to group or others (mode {stat.S_IMODE(mode):o})",
                    where=where,
                    fix=f"chmod 600 {path}",
                )
            key = handle.read()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the signing key file: {exc.strerror or exc}", where=where, fix=fix_read
        ) from exc
    if key.endswith(b"\n"):
        key = key[:-2] if key.endswith(b"\r\n") else key[:-1]
    if not key:
        raise ConfigError("signing key file is empty", where=where, fix=fix_read)
    return key


_HANDLER_NAME = "torchkiln-env"


def configure_logging(level: int | None) -> None:
    """Send torchkiln's log to stderr at ``level`` (from ``TORCHKILN_LOG``); the library and the CLI both call it.

    Without the variable nothing is configured: an application's own logging setup decides.
    """
    log = logging.getLogger("torchkiln")
    if level is None:
        return
    if not any(h.get_name() == _HANDLER_NAME for h in log.handlers):
        handler = logging.StreamHandler()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("[torchkiln %(levelname)s] %(name)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(level)
