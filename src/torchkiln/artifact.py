"""The artifact byte format (v1): encode, decode, integrity and signature checks.

This module owns the bytes of an artifact file and nothing else. It never unpickles and never imports torch:
its job is to make sure that no section byte is handed out before every length, every hash and (when a key
is configured) the HMAC signature have been verified. The normative spec is docs/FORMAT.md; the numbered
steps in ``_read_header`` and ``decode`` follow its section 5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
import struct
from collections.abc import Mapping
from typing import Any

from torchkiln.errors import (
    ArtifactCorruptError,
    ArtifactEncodeError,
    IncompatibleArtifactError,
    UntrustedArtifactError,
)
from torchkiln.layout import FORMAT_VERSION
from torchkiln.settings import ENV_SIGNING_KEY, ENV_SIGNING_KEY_FILE

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "MAX_HEADER_BYTES",
    "MAX_SECTION_BYTES",
    "PREAMBLE_BYTES",
    "SIGNATURE_BYTES",
    "Artifact",
    "ArtifactEncodeError",
    "encode",
    "decode",
    "Peek",
    "peek",
    "peek_header",
]

MAGIC = b"TKLN"
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_SECTION_BYTES = 4 * 1024 * 1024 * 1024
PREAMBLE_BYTES = 44  # magic, version, flags, header length (12 bytes) + header_sha256 (32 bytes)
SIGNATURE_BYTES = 32
FLAG_SIGNED = 0x0001

_PREFIX = struct.Struct("<4sHHI")  # the 12 bytes that header_sha256 covers together with the header
_MIN_HEADER_BYTES = 2  # "{}"
_NAME = re.compile(r"[a-z0-9_]{1,32}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RESERVED_KEYS = ("format_version", "sections")
_ENTRY_KEYS = frozenset({"name", "offset", "length", "sha256"})


_FIX_CORRUPT = (
    "delete it (torchkiln rm KEY) and let torchkiln compile it again; "
    "if this keeps happening, check the disk or network under the cache store"
)
_FIX_VERSION = (
    "upgrade torchkiln to a release that reads this format, or delete the file and let this "
    "torchkiln compile it again (a damaged version field looks the same)"
)
_FIX_UNTRUSTED = (
    "rebuild the artifact where the same signing key is configured, or check that "
    f"{ENV_SIGNING_KEY} / {ENV_SIGNING_KEY_FILE} hold the key the fleet signs with"
)


@dataclasses.dataclass(frozen=True, repr=False)
class Artifact:
    """A verified artifact: the caller's header (reserved keys removed), its sections, and the signed flag.

    ``signed`` says the file carries a signature; it was checked only if ``decode`` was given a key.
    """

    header: dict[str, Any]
    sections: dict[str, bytes]
    signed: bool

    def __repr__(self) -> str:  # sections are megabytes of pickle: show their sizes, never their bytes
        sizes = ", ".join(f"{name}={len(blob)}B" for name, blob in self.sections.items())
        return f"Artifact(header_keys={sorted(self.header)}, sections=[{sizes}], signed={self.signed})"


@dataclasses.dataclass(frozen=True)
class _Layout:
    header: dict[str, Any]  # the whole JSON header, reserved keys included
    entries: list[tuple[str, int, int, str]]  # name, offset in the data area, length, sha256 hex
    data_start: int
    data_length: int
    signed: bool


def encode(header: Mapping[str, Any], sections: Mapping[str, bytes], *, signing_key: bytes | None = None) -> bytes:
    """Serialize ``header`` (JSON-able, reserved keys excluded) and ``sections`` into one artifact.

    With ``signing_key`` the artifact is signed (HMAC-SHA256 over every byte before the signature).
    """
    if not isinstance(header, Mapping):
        raise ArtifactEncodeError(f"header must be a mapping, not {type(header).__name__}", where="header")
    clash = sorted(key for key in _RESERVED_KEYS if key in header)
    if clash:
        raise ArtifactEncodeError(
            f"header uses reserved key(s) {clash}",
            where="header",
            fix="drop them: the codec writes 'format_version' and 'sections' itself",
        )
    if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
        raise ArtifactEncodeError("signing_key must be non-empty bytes", where="signing_key")

    table: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    offset = 0
    for name, blob in sections.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ArtifactEncodeError(
                f"section name {name!r} does not match [a-z0-9_]{{1,32}}", where=f"section {name!r}"
            )
        try:
            view = memoryview(blob).cast("B")
        except (TypeError, ValueError) as exc:
            raise ArtifactEncodeError(
                f"section {name!r} is not a contiguous bytes-like object ({exc})", where=f"section {name!r}"
            ) from exc
        if view.nbytes > MAX_SECTION_BYTES:
            raise ArtifactEncodeError(
                f"section {name!r} is {view.nbytes} bytes, over the {MAX_SECTION_BYTES}-byte cap",
                where=f"section {name!r}",
            )
        digest = hashlib.sha256(view).hexdigest()
        table.append({"name": name, "offset": offset, "length": view.nbytes, "sha256": digest})
        blobs.append(view)
        offset += view.nbytes

    full = dict(header)
    full["format_version"] = FORMAT_VERSION
    full["sections"] = table
    try:
        raw = json.dumps(full, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArtifactEncodeError(
            f"header is not JSON-serializable: {exc}",
            where="header",
            fix="keep header values to str, int, float (finite), bool, None, lists and str-keyed dicts",
        ) from exc
    if len(raw) > MAX_HEADER_BYTES:
        raise ArtifactEncodeError(
            f"header is {len(raw)} bytes of JSON, over the {MAX_HEADER_BYTES}-byte cap",
            where="header",
            fix="store large data as a section, not in the header",
        )

    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, FLAG_SIGNED if signing_key else 0, len(raw))
    parts: list[bytes | memoryview] = [prefix, hashlib.sha256(prefix + raw).digest(), raw, *blobs]
    if signing_key:
        # Fed part by part so that the sections are not copied once more just to be signed.
        mac = hmac.new(signing_key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        parts.append(mac.digest())
    return b"".join(parts)


def decode(data: bytes, *, signing_key: bytes | None = None, where: str = "<bytes>") -> Artifact:
    """Verify ``data`` completely (docs/FORMAT.md section 5) and return its header and sections.

    Raises ArtifactCorruptError, IncompatibleArtifactError (unknown format version) or, when
    ``signing_key`` is given, UntrustedArtifactError (unsigned, or the signature differs). Without a key a
    signed artifact decodes; its signature is not checked.
    """
    view = memoryview(data).cast("B")  # slices of a memoryview are hashed without being copied
    layout = _read_header(view, where)
    # Step 6: the declared sizes must account for every byte, no more and no less.
    expected = layout.data_start + layout.data_length + (SIGNATURE_BYTES if layout.signed else 0)
    if len(view) != expected:
        kind = "truncated" if len(view) < expected else "has trailing bytes"
        raise _corrupt(f"artifact {kind}: {len(view)} bytes, the header declares {expected}", where)
    # Step 7: every section's hash.
    for name, offset, length, sha256 in layout.entries:
        start = layout.data_start + offset
        if hashlib.sha256(view[start : start + length]).hexdigest() != sha256:
            raise _corrupt(f"section {name!r} sha256 mismatch", where)
    # Step 8: the signature, only when the caller has a key to check it with.
    if signing_key is not None:
        if not layout.signed:
            raise UntrustedArtifactError(
                "artifact is unsigned but a signing key is configured", where=where, fix=_FIX_UNTRUSTED
            )
        body_end = len(view) - SIGNATURE_BYTES
        wanted = hmac.new(signing_key, view[:body_end], hashlib.sha256).digest()
        if not hmac.compare_digest(wanted, bytes(view[body_end:])):
            raise UntrustedArtifactError(
                "artifact signature does not match the configured signing key",
                where=where,
                fix=_FIX_UNTRUSTED,
            )
    # Only now is anything copied out.
    sections = {
        name: bytes(view[layout.data_start + offset : layout.data_start + offset + length])
        for name, offset, length, _ in layout.entries
    }
    header = {key: value for key, value in layout.header.items() if key not in _RESERVED_KEYS}
    return Artifact(header=header, sections=sections, signed=layout.signed)


@dataclasses.dataclass(frozen=True)
class Peek:
    """What ``peek`` reads without hashing the sections: the codec's own fields and the opaque header."""

    format_version: int
    sections: tuple[tuple[str, int, str], ...]  # name, length, sha256 hex
    signed: bool
    header: dict[str, Any]  # the caller's keys (reserved keys removed)


def peek(data: bytes, *, where: str = "<bytes>") -> Peek:
    """``peek_header``, split into the codec's reserved fields and the caller's header."""
    layout = _read_header(memoryview(data).cast("B"), where)
    return Peek(
        format_version=int(layout.header["format_version"]),
        sections=tuple((name, length, sha256) for name, _, length, sha256 in layout.entries),
        signed=layout.signed,
        header={key: value for key, value in layout.header.items() if key not in _RESERVED_KEYS},
    )


def peek_header(data: bytes, *, where: str = "<bytes>") -> dict[str, Any]:
    """Return the whole JSON header (reserved keys included) after steps 1-5 of docs/FORMAT.md section 5.

    ``data`` may be a prefix of the file of at least ``PREAMBLE_BYTES + header_length`` bytes. Sections are
    NOT hashed and the file size is not checked: this is for ``ls`` and ``inspect``, never for deciding to
    unpickle anything.
    """
    return _read_header(memoryview(data).cast("B"), where).header


def _corrupt(what: str, where: str) -> ArtifactCorruptError:
    return ArtifactCorruptError(what, where=where, fix=_FIX_CORRUPT)


def _read_header(view: memoryview, where: str) -> _Layout:
    """Steps 1-5: magic, version, preamble, header digest, JSON and section table; nothing else."""
    size = len(view)
    # Step 1.
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC:
        if size < len(MAGIC) and MAGIC.startswith(head):
            raise _corrupt(f"artifact truncated: {size} bytes, shorter than the magic", where)
        raise _corrupt(f"not a torchkiln artifact: starts with {head!r}, not {MAGIC!r}", where)
    # Step 2: the version decides the layout of everything after it, so it is read before anything else.
    if size < 6:
        raise _corrupt(f"artifact truncated: {size} bytes, inside the format version", where)
    version = int.from_bytes(view[4:6], "little")
    if version != FORMAT_VERSION:
        raise IncompatibleArtifactError(
            f"artifact format version {version}; this torchkiln reads version {FORMAT_VERSION}",
            where=where,
            fix=_FIX_VERSION,
        )
    # Step 3.
    if size < PREAMBLE_BYTES:
        raise _corrupt(f"artifact truncated: {size} bytes, inside the {PREAMBLE_BYTES}-byte preamble", where)
    _, _, flags, header_length = _PREFIX.unpack(view[: _PREFIX.size])
    if flags & ~FLAG_SIGNED:
        raise _corrupt(f"unknown flag bits set: {flags:#06x}", where)
    if not _MIN_HEADER_BYTES <= header_length <= MAX_HEADER_BYTES:
        raise _corrupt(f"header length {header_length} is outside [2, {MAX_HEADER_BYTES}]", where)
    header_end = PREAMBLE_BYTES + header_length
    if size < header_end:
        raise _corrupt(f"artifact truncated: {size} bytes, inside the {header_length}-byte header", where)
    # Step 4.
    digest = hashlib.sha256(view[: _PREFIX.size])
    digest.update(view[PREAMBLE_BYTES:header_end])
    if digest.digest() != bytes(view[_PREFIX.size : PREAMBLE_BYTES]):
        raise _corrupt("header sha256 mismatch", where)
    # Step 5.
    header = _parse_json(bytes(view[PREAMBLE_BYTES:header_end]), where)
    fmt = header.get("format_version")
    if type(fmt) is not int or fmt != version:  # type(): True == 1, but true is not a version
        raise _corrupt(f"header format_version {fmt!r} differs from the preamble's {version}", where)
    entries = _check_table(header.get("sections"), where)
    data_length = sum(length for _, _, length, _ in entries)
    return _Layout(header, entries, header_end, data_length, bool(flags & FLAG_SIGNED))


def _parse_json(raw: bytes, where: str) -> dict[str, Any]:
    try:
        # Strict UTF-8 first: json.loads(bytes) would also guess UTF-16/32, which the format does not allow.
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _corrupt(f"header is not valid JSON: {exc}", where) from exc
    if not isinstance(header, dict):
        raise _corrupt(f"header is a JSON {type(header).__name__}, not an object", where)
    return header


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that keep different copies of a duplicate key see different headers; refuse the file.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _check_table(table: Any, where: str) -> list[tuple[str, int, int, str]]:
    if not isinstance(table, list):
        raise _corrupt(f"header 'sections' is {type(table).__name__}, not a list", where)
    entries: list[tuple[str, int, int, str]] = []
    seen: set[str] = set()
    next_offset = 0
    for index, entry in enumerate(table):
        label = f"section table entry {index}"
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise _corrupt(f"{label} is not an object with exactly {sorted(_ENTRY_KEYS)}", where)
        name, offset, length, sha256 = entry["name"], entry["offset"], entry["length"], entry["sha256"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise _corrupt(f"{label} has an invalid name {name!r}", where)
        if name in seen:
            raise _corrupt(f"section {name!r} appears twice", where)
        seen.add(name)
        if type(length) is not int or not 0 <= length <= MAX_SECTION_BYTES:
            raise _corrupt(f"section {name!r} length {length!r} is outside [0, {MAX_SECTION_BYTES}]", where)
        if type(offset) is not int or offset != next_offset:
            # Contiguous, in order: no gap (unhashed bytes) and no overlap (one byte read as two sections).
            raise _corrupt(f"section {name!r} offset {offset!r}, expected {next_offset}", where)
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256):
            raise _corrupt(f"section {name!r} sha256 is not 64 lowercase hex digits", where)
        entries.append((name, offset, length, sha256))
        next_offset += length
    return entries
