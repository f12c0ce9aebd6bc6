"""The non-output half of the cache commands: resolving TARGET/SPEC strings, reading and verifying artifacts.

Owns what ``cli/cache.py``'s commands compute, so that module keeps only arguments and output. Nothing here
unpickles. Reads of a local cache go straight to the file rather than through ``Store.get``, because ``get``
records a use for LRU eviction and looking at an artifact (``ls``, ``inspect``, ``verify``) is not using it.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from torchkiln import targets
from torchkiln.errors import (
    ArtifactCorruptError,
    ConfigError,
    IncompatibleArtifactError,
    StoreError,
    TorchkilnError,
    UntrustedArtifactError,
)
from torchkiln.store import ARTIFACT_SUFFIX, LocalStore, Store, check_key
from torchkiln.store.base import is_variant_of, variant_key

if TYPE_CHECKING:
    from torchkiln.cache_key import CacheKey
    from torchkiln.header import ArtifactHeader

__all__ = [
    "FUNCTION_FORM",
    "INPUTS_FORM",
    "TARGET_FORM",
    "UsageError",
    "check_keys",
    "predict",
    "parse_size",
    "read_artifact",
    "read_header",
    "request_key",
    "resolve_inputs",
    "resolve_target",
    "stored_keys",
    "verify_one",
]

TARGET_FORM = "pkg.module:factory (an nn.Module class, a factory returning one, or a module instance)"
FUNCTION_FORM = "pkg.module:function (a module-level function, with --function)"
INPUTS_FORM = "pkg.module:function returning a tuple of positional inputs, or an (args_tuple, kwargs_dict) pair"
_HEADER_PREFIX = 1 << 20  # headers are a few KiB; a larger one is read whole on a second try
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)
#: Reading with O_NOATIME (Linux) keeps even relatime mounts from counting a look at a file as a use.
_NOATIME = getattr(os, "O_NOATIME", 0)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class UsageError(ConfigError):
    """Bad command-line input: ``torchkiln`` reports it (stderr; a JSON object on stdout with ``--json``), exits 2."""


# -- TARGET and SPEC -------------------------------------------------------------------------------


def import_attr(spec: str, what: str, form: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{what} {spec!r} is not of the form {form}")
    # Like `uvicorn app:app`: a module next to where the command runs is importable from the console script.
    cwd = str(Path.cwd())
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module runs here: any error while importing it is a bad argument
        raise UsageError(
            f"cannot import {module_name!r} for {what} {spec!r} ({type(exc).__name__}: {exc}); expected {form}, "
            "with the module importable from here (check the spelling, PYTHONPATH or the current directory)"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r} ({what} {spec!r})") from None
    return obj


def resolve_target(spec: str, *, function: bool = False) -> Any:
    """The nn.Module (or, with ``function``, the function) that ``pkg.module:attr`` names."""
    import torch

    obj = import_attr(spec, "TARGET", FUNCTION_FORM if function else TARGET_FORM)
    if function:
        if isinstance(obj, torch.nn.Module | type) or not hasattr(obj, "__code__"):
            raise UsageError(
                f"--function: TARGET {spec!r} is a {type(obj).__name__}, not a function; "
                f"drop --function to compile a module (expected {FUNCTION_FORM})"
            )
        _validate(obj)
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise UsageError(f"TARGET {spec!r} is a {type(obj).__name__}; expected {TARGET_FORM}")
    try:
        built = obj()
    except Exception as exc:
        raise UsageError(
            f"calling TARGET {spec}() failed ({type(exc).__name__}: {exc}); TARGET must build the module "
            "without arguments; to compile a function itself, pass --function"
        ) from exc
    if not isinstance(built, torch.nn.Module):
        raise UsageError(
            f"TARGET {spec}() returned an object of type {type(built).__name__}, not an nn.Module; "
            f"expected {TARGET_FORM}; to compile a function itself, pass --function"
        )
    return built


def _validate(target: Any) -> None:
    """torchkiln.compile's own target check (e.g. no nested functions), reported as a usage error."""
    from torchkiln.errors import InvalidTargetError

    try:
        targets.validate(target)
    except InvalidTargetError as exc:
        raise UsageError(str(exc)) from None


def resolve_inputs(spec: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) from SPEC: a tuple/list is args, a (tuple, dict) pair is (args, kwargs), a dict kwargs."""
    import torch

    obj = import_attr(spec, "SPEC", INPUTS_FORM)
    try:
        value = obj() if callable(obj) else obj
    except Exception as exc:
        raise UsageError(f"calling SPEC {spec}() failed ({type(exc).__name__}: {exc})") from exc
    if isinstance(value, torch.Tensor):
        return (value,), {}
    if isinstance(value, tuple | list):
        if len(value) == 2 and isinstance(value[0], tuple | list) and isinstance(value[1], Mapping):
            args, kwargs = tuple(value[0]), value[1]
        else:
            args, kwargs = tuple(value), {}
    elif isinstance(value, Mapping):
        args, kwargs = (), value
    else:
        raise UsageError(f"SPEC {spec!r} gave an object of type {type(value).__name__}; expected {INPUTS_FORM}")
    if not all(isinstance(k, str) for k in kwargs):
        raise UsageError(f"SPEC {spec!r}: keyword input names must be strings")
    return args, dict(kwargs)


def request_key(
    target: Any,
    ex_args: tuple[Any, ...],
    ex_kwargs: dict[str, Any],
    *,
    name: str | None,
    dynamic: bool,
    mode: str | None = None,
) -> CacheKey:
    """The key ``torchkiln.compile(target, ex_args, example_kwargs=ex_kwargs, name=, dynamic=, mode=)`` looks up."""
    from torchkiln import api

    return api.request_key(target, ex_args, ex_kwargs, name=name, dynamic=dynamic, mode=mode)


# -- reading artifacts ---------------------------------------------------------------------------------------


def local_path(store: Store, key: str) -> Path | None:
    return store.dir / (key + ARTIFACT_SUFFIX) if isinstance(store, LocalStore) else None


def _open_unrecorded(path: Path) -> BinaryIO:
    """Open for reading without updating atime (LocalStore's LRU clock), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOATIME)
    except PermissionError:
        if not _NOATIME:
            raise
        fd = os.open(path, os.O_RDONLY)  # Linux grants O_NOATIME to the file's owner only
    return os.fdopen(fd, "rb")


def read_artifact(store: Store, key: str, *, header_only: bool = False) -> bytes | None:
    """The artifact's bytes (a prefix with ``header_only``, for local files) without counting as a use.

    A tiered store is read tier by tier (local file, then the remote object), never through ``TieredStore.get``:
    looking must not copy bucket objects into the local tier.
    """
    local, remote = getattr(store, "local", None), getattr(store, "remote", None)
    if local is not None and remote is not None:
        found = read_artifact(local, key, header_only=header_only)
        return found if found is not None else read_artifact(remote, key, header_only=header_only)
    path = local_path(store, key)
    if path is None:
        return store.get(key)
    try:
        with _open_unrecorded(path) as f:
            return f.read(_HEADER_PREFIX) if header_only else f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read the artifact: {exc.strerror or exc}", where=str(path)) from exc


def read_header(store: Store, key: str) -> ArtifactHeader | None:
    """The stored artifact's header (sections not hashed: for listing and predicting, never for unpickling)."""
    from torchkiln.artifact import peek
    from torchkiln.header import ArtifactHeader

    data = read_artifact(store, key, header_only=True)
    if data is None:
        return None
    try:
        peeked = peek(data, where=key)
    except ArtifactCorruptError:
        if len(data) < _HEADER_PREFIX:
            raise
        full = read_artifact(store, key)  # a header larger than the prefix
        if full is None:
            return None
        peeked = peek(full, where=key)
    return ArtifactHeader.from_dict(peeked.header, where=key)


def stored_keys(store: Store) -> tuple[list[CacheKey], list[dict[str, str]]]:
    """CacheKeys read from every stored header, and the entries that could not be read."""
    keys: list[CacheKey] = []
    skipped: list[dict[str, str]] = []
    for entry in store.list():
        try:
            header = read_header(store, entry.key)
            if header is not None:
                keys.append(header.cache_key)
        except TorchkilnError as exc:
            skipped.append({"key": entry.key, "reason": exc.what})
    return keys, skipped


def predict(
    store: Store, target: Any, ex_args: tuple[Any, ...], ex_kwargs: dict[str, Any], wanted: CacheKey
) -> dict[str, Any]:
    """What ``torchkiln.compile`` will do for this request, read from headers only (nothing is unpickled).

    The same rule the load applies (loader.check_header) to the key's artifact and then each variant: the first
    that fits is the predicted hit, subject only to what is decided at the first call (torch's kept guards and
    the re-checks on the call's arguments); none fitting is a miss that publishes a new variant.
    """
    from torchkiln import api, loader

    fingerprint = api.request_fingerprint(target, ex_args, ex_kwargs)
    is_module = targets.validate(target)
    candidates: list[dict[str, Any]] = []
    keys = [wanted.key, *store.variants(wanted.key)]
    for store_key in keys:
        try:
            header = read_header(store, store_key)
        except TorchkilnError as exc:
            candidates.append({"store_key": store_key, "fits": False, "reason": exc.what})
            continue
        if header is None:
            continue
        try:
            loader.check_header(
                header,
                key=wanted.key,
                store_key=store_key,
                fingerprint=fingerprint,
                target=target,
                is_module=is_module,
                call=(ex_args, ex_kwargs),
            )
        except TorchkilnError as exc:
            candidates.append({"store_key": store_key, "fits": False, "reason": exc.what})
            continue
        candidates.append({"store_key": store_key, "fits": True, "reason": "fits this process"})
        break
    fit = next((c["store_key"] for c in candidates if c["fits"]), None)
    return {"hit": fit is not None, "store_key": fit, "candidates": candidates}


def parse_size(text: str) -> int:
    """``1048576``, ``500M``, ``2G``, ``1.5GiB`` -> bytes (K/M/G/T are powers of 1024)."""
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"bad size {text!r}: expected bytes (1048576) or a number with K, M, G or T (500M, 2G)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def check_keys(keys: list[str]) -> None:
    for key in keys:
        try:
            check_key(key, where="command line")
        except StoreError as exc:
            raise UsageError(exc.what) from None


def verify_one(data: bytes | None, key: str | None, where: str, signing_key: bytes | None) -> dict[str, Any]:
    from torchkiln.artifact import decode
    from torchkiln.header import ArtifactHeader

    record: dict[str, Any] = {"artifact": where, "status": "missing" if data is None else "ok"}
    if data is None:
        return record
    record["bytes"] = len(data)
    try:
        decoded = decode(data, signing_key=signing_key, where=where)
        record["signed"] = decoded.signed
        built_for = ArtifactHeader.from_dict(decoded.header, where=where).key
        # A variant is stored under <its key>.<first 16 hex of its own sha256> (store.base.variant_key).
        variant = is_variant_of(key or "", built_for) and key == variant_key(
            built_for, hashlib.sha256(data).hexdigest()
        )
        if key is not None and built_for != key and not variant:
            # torchkiln.compile refuses such a file (a valid artifact copied under another key): so does verify.
            record.update(status="mismatch", reason=f"stored under {key} but built for {built_for}")
    except ArtifactCorruptError as exc:
        record.update(status="corrupt", reason=exc.what)
    except UntrustedArtifactError as exc:
        record.update(status="untrusted", reason=exc.what)
    except IncompatibleArtifactError as exc:
        record.update(status="incompatible", reason=exc.what)
    return record
