"""The kernel bundle codec: Inductor/Triton cache files <-> the deterministic zip stored in an artifact's ``kernels``
section.

Specified in docs/FORMAT.md section 9 (normative: where the two disagree, the document wins and this code has a
bug); the section numbers below are that document's. Pure: standard library only, no torch, no filesystem, no
host lookups (the caller passes the machine and CPU it records). :func:`encode` turns a ``{name: bytes}`` map and
the manifest fields into the same bytes every time; :func:`decode` checks the zip's structure, the manifest, every
name and every cap before it returns a :class:`Bundle`, whose :meth:`Bundle.read` decompresses one file and checks
its size and sha256. Reading is per file so that a restore onto a warm cache decompresses nothing. Every way a
bundle can be malformed or hostile raises :class:`ArtifactCorruptError` (fuzzed: fuzz/fuzz_kernel_bundle.py,
tests/kernel_bundle/test_bundle.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from torchkiln.errors import ArtifactCorruptError
from torchkiln.layout import FORMAT_VERSION

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_TOTAL_BYTES",
    "ROOTS",
    "Bundle",
    "Entry",
    "Manifest",
    "check_name",
    "corrupt",
    "decode",
    "encode",
]

BUNDLE_FORMAT = FORMAT_VERSION  # the bundle is a section of the artifact: its layout is the format's
MANIFEST = "MANIFEST.json"
#: The cache roots a name may start with (section 9.3): Inductor's cache dir and Triton's.
ROOTS = ("inductor", "triton")
# Caps against a hostile or corrupt bundle (zip bombs), section 9.4. A CPU kernel .so is ~50 KiB-5 MiB and a cubin
# a few MiB; a real bundle is far below these.
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_TOTAL_BYTES = 1024 * 1024 * 1024
MAX_FILES = 20_000

# Fixed zip metadata (section 9.1): the same files give the same bytes on every host and every day.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_ZIP_MODE = (stat.S_IFREG | 0o644) << 16
_ZIP_UNIX = 3
_COMPRESSION = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED})
_SHA256 = re.compile(r"[0-9a-f]{64}")
# What the standard library's zip reader raises on bytes it cannot make sense of: its own BadZipFile, zlib's and
# struct's errors on a damaged deflate stream or record, EOFError/OSError on a truncated member, ValueError
# (UnicodeDecodeError included) on a bad name or offset, RuntimeError (NotImplementedError included) on a feature
# it refuses.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    struct.error,
    EOFError,
    OSError,
    ValueError,
    RuntimeError,
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One cache file of a bundle, as its manifest describes it."""

    name: str  # "inductor/ab/cab….so": a root of ROOTS, then the path under that cache dir
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """``MANIFEST.json`` (section 9.2), typed. ``files`` is in the zip's order."""

    torch_version: str
    settings: dict[str, bool]
    isa: str | None
    machine: str | None
    cpu_isa: tuple[str, ...] | None
    legacy_cpu: str | None  # bundles written before cpu_isa: a digest of the exact extension list
    files: tuple[Entry, ...]


def corrupt(what: str) -> ArtifactCorruptError:
    """The error for a malformed or hostile bundle (also install.py's, for a target outside the cache dirs)."""
    return ArtifactCorruptError(
        what, where="kernel bundle", fix="delete the artifact with torchkiln rm KEY and recompile"
    )


def check_name(name: str) -> PurePosixPath:
    """Section 9.3: reject anything but a plain relative path under one of :data:`ROOTS`."""
    path = PurePosixPath(name)
    bad = (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or name.startswith("/")
        or len(path.parts) < 2
        or path.parts[0] not in ROOTS
        or any(part in ("", ".", "..") for part in name.split("/"))
        or re.match(r"^[A-Za-z]:", name) is not None
    )
    if bad:
        raise ArtifactCorruptError(
            f"kernel bundle entry {name!r} is not a plain relative path under {'/'.join(ROOTS)}",
            where="kernel bundle",
            fix="the artifact is corrupt or hostile; delete it with torchkiln rm KEY",
        )
    return path


def encode(
    files: Mapping[str, bytes],
    *,
    torch_version: str,
    settings: Mapping[str, bool],
    isa: str | None,
    machine: str,
    cpu_isa: Sequence[str] | None,
) -> bytes:
    """The bundle of ``files`` (section 9.1): same arguments, same bytes. ``ArtifactCorruptError`` for a bad name."""
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "torch": torch_version,
        "settings": dict(sorted(settings.items())),
        "isa": isa,
        "machine": machine,
        "cpu_isa": None if cpu_isa is None else list(cpu_isa),
        "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in sorted(files.items())
        },
    }
    for name in manifest["files"]:
        check_name(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        entries = [(MANIFEST, json.dumps(manifest, sort_keys=True).encode())]
        entries += sorted(files.items())
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = _ZIP_MODE
            info.create_system = _ZIP_UNIX  # whatever the build host
            zf.writestr(info, data, compresslevel=6)
    return buf.getvalue()


class Bundle:
    """A decoded bundle: the manifest checked against the zip; file bytes are read (and verified) on demand."""

    def __init__(self, zf: zipfile.ZipFile, manifest: Manifest, infos: dict[str, zipfile.ZipInfo]) -> None:
        self._zf = zf
        self._infos = infos
        self.manifest = manifest

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.manifest.files

    def read(self, entry: Entry) -> bytes:
        """The file's bytes, after checking their size and sha256 against the manifest (section 9.5, step 9)."""
        data = _read_member(self._zf, self._infos[entry.name], f"kernel bundle entry {entry.name!r}")
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise corrupt(f"kernel bundle entry {entry.name!r} sha256 mismatch")
        return data

    def close(self) -> None:
        self._zf.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode(data: bytes) -> Bundle:
    """Steps 1-8 of section 9.5 on ``data``; raises ``ArtifactCorruptError`` on the first that fails."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except _ZIP_ERRORS as exc:
        raise corrupt(f"kernel bundle is not a zip: {exc}") from exc
    try:
        manifest, infos = _check(zf)
    except BaseException:
        zf.close()
        raise
    return Bundle(zf, manifest, infos)


def _check(zf: zipfile.ZipFile) -> tuple[Manifest, dict[str, zipfile.ZipInfo]]:
    infos = zf.infolist()
    if not infos or infos[0].filename != MANIFEST or infos[0].file_size > MAX_FILE_BYTES:
        raise corrupt("kernel bundle has no MANIFEST.json first")
    raw = _parse_json(_read_member(zf, infos[0], "kernel bundle MANIFEST.json"))
    if not isinstance(raw, dict) or type(raw.get("format")) is not int or raw["format"] != BUNDLE_FORMAT:
        raise corrupt(f"kernel bundle format is not {BUNDLE_FORMAT}")
    files = raw.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise corrupt("kernel bundle manifest has no valid file table")
    names = [info.filename for info in infos[1:]]
    if sorted(names) != sorted(files) or len(set(names)) != len(names):
        raise corrupt("kernel bundle entries do not match its manifest")
    entries: list[Entry] = []
    total = 0
    for info in infos[1:]:
        check_name(info.filename)
        mode = info.external_attr >> 16
        if info.is_dir() or (mode and not stat.S_ISREG(mode)):
            raise corrupt(f"kernel bundle entry {info.filename!r} is not a regular file (link?)")
        meta = files[info.filename]
        size = meta.get("size") if isinstance(meta, dict) else None
        if type(size) is not int or size != info.file_size:
            raise corrupt(f"kernel bundle entry {info.filename!r} size disagrees with manifest")
        if info.file_size > MAX_FILE_BYTES:
            raise corrupt(f"kernel bundle entry {info.filename!r} is over {MAX_FILE_BYTES} bytes")
        sha256 = meta.get("sha256")
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise corrupt(f"kernel bundle entry {info.filename!r} has no valid sha256 in the manifest")
        _check_member(info)
        total += info.file_size
        entries.append(Entry(info.filename, size, sha256))
    if total > MAX_TOTAL_BYTES:
        raise corrupt(f"kernel bundle expands to {total} bytes, over {MAX_TOTAL_BYTES}")
    manifest = Manifest(
        torch_version=_field(raw, "torch", str, ""),
        settings=_settings(raw.get("settings")),
        isa=_field(raw, "isa", str, None),
        machine=_field(raw, "machine", str, None),
        cpu_isa=_cpu_isa(raw.get("cpu_isa")),
        legacy_cpu=_field(raw, "cpu", str, None),
        files=tuple(entries),
    )
    return manifest, {info.filename: info for info in infos[1:]}


def _check_member(info: zipfile.ZipInfo) -> None:
    # Only what encode writes can be read back (section 9.1): no encryption, no other compression method (whose
    # decompressors the reader would otherwise have to trust with hostile input).
    if info.flag_bits & 0x1 or info.compress_type not in _COMPRESSION:
        raise corrupt(f"kernel bundle entry {info.filename!r} is encrypted or uses another compression method")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> bytes:
    """The member's bytes, at most its declared (capped) size; its CRC-32 is checked at the end of the stream."""
    _check_member(info)
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)  # bounded: the declared size was capped
    except _ZIP_ERRORS as exc:  # CRC error, truncated or damaged deflate stream, mismatched local header
        raise corrupt(f"{what} is unreadable: {exc}") from exc
    if len(data) != info.file_size:
        raise corrupt(f"{what} is not the {info.file_size} bytes its zip entry declares")
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _parse_json(raw: bytes) -> Any:
    """Section 9.2: UTF-8 JSON; NaN/Infinity and duplicate keys are errors (as in the artifact header)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise corrupt(f"kernel bundle MANIFEST.json is unreadable: {exc}") from exc


def _field(raw: dict[str, Any], key: str, kind: type[Any], default: Any) -> Any:
    """An optional typed manifest field: absent or null gives ``default``; another type is corrupt."""
    value = raw.get(key)
    if value is None:
        return default
    if type(value) is not kind:
        raise corrupt(f"kernel bundle manifest field {key!r} is not a {kind.__name__}")
    return value


def _settings(value: object) -> dict[str, bool]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(type(v) is bool for v in value.values()):
        raise corrupt("kernel bundle manifest field 'settings' is not an object of booleans")
    return dict(value)


def _cpu_isa(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise corrupt("kernel bundle manifest field 'cpu_isa' is not a list of strings")
    return tuple(value)
