"""atheris fuzz target for the kernel bundle codec: ``decode`` and ``Bundle.read`` never raise anything else.

The property: whatever the bytes, ``torchkiln.kernels.bundle.decode`` followed by ``read`` of every entry returns
the files or raises ArtifactCorruptError. Any other exception (zlib.error, KeyError, TypeError, RecursionError,
NotImplementedError, MemoryError, ...) is a bug and atheris reports it as a crash with the input that caused it.
Whatever decodes must survive a re-encode unchanged, and every name it returns must be a plain relative path
under a cache root.

Raw fuzzer bytes almost never form a zip whose central directory parses, so most inputs are built with the
structure in place (a real zip around a fuzzer-chosen manifest and fuzzer-chosen names, edits to a valid bundle)
to reach the manifest, name and cap checks behind it. See docs/FORMAT.md section 9.8:

    pip install atheris; python fuzz/fuzz_kernel_bundle.py -atheris_runs=100000
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional, no stubs

with atheris.instrument_imports():
    try:
        from torchkiln.errors import ArtifactCorruptError
        from torchkiln.kernels import bundle
    except ImportError:  # run from a checkout without installing torchkiln (and torch) into the fuzz venv
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from torchkiln.errors import ArtifactCorruptError
        from torchkiln.kernels import bundle

NAMES = [
    "inductor/ab/k.so",
    "triton/0/x.json",
    "inductor/ab/k.so",  # a duplicate
    "MANIFEST.json",
    "inductor",
    "other/x",
    "../x",
    "inductor/../../x",
    "/inductor/x",
    "inductor//x",
    "inductor/./x",
    "inductor\\..\\x",
    "C:/x",
    "inductor/d/",
    "inductor/\x00x",
]
VALUES: list[Any] = [None, True, 1, 1.0, -1, "", "x", [], ["avx2"], [1], {}, {"a": True}, {"a": "b"}, 2**70]
METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def _value(fdp: Any) -> Any:
    return VALUES[fdp.ConsumeIntInRange(0, len(VALUES) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicode(8)


def _manifest(fdp: Any, entries: list[tuple[str, bytes]]) -> dict[str, Any]:
    """A manifest whose every field may be right or wrong, so each check gets exercised."""
    files: dict[str, Any] = {}
    for name, data in entries:
        meta: dict[str, Any] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if fdp.ConsumeIntInRange(0, 4) == 0:
            meta[["size", "sha256"][fdp.ConsumeIntInRange(0, 1)]] = _value(fdp)
        files[name if fdp.ConsumeIntInRange(0, 9) else NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)]] = meta
    manifest: dict[str, Any] = {"format": 1 if fdp.ConsumeBool() else _value(fdp), "files": files}
    for key in ("torch", "settings", "isa", "machine", "cpu_isa", "cpu"):
        if fdp.ConsumeBool():
            manifest[key] = _value(fdp)
    return manifest


def _zip(fdp: Any, manifest_bytes: bytes | None) -> bytes:
    entries = [
        (NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)], bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32))))
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    ]
    raw = manifest_bytes if manifest_bytes is not None else json.dumps(_manifest(fdp, entries)).encode()
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # duplicate names are written on purpose
        if fdp.ConsumeIntInRange(0, 9):
            zf.writestr(bundle.MANIFEST, raw)
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = METHODS[fdp.ConsumeIntInRange(0, len(METHODS) - 1)]
            info.external_attr = fdp.ConsumeIntInRange(0, 0xFFFF) << 16
            info.flag_bits |= fdp.ConsumeIntInRange(0, 1)
            zf.writestr(info, data)
    return buf.getvalue()


def _candidate(fdp: Any) -> bytes:
    mode = fdp.ConsumeIntInRange(0, 4)
    if mode == 0:  # raw bytes
        return bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 1:  # raw bytes after a local file header's signature
        return b"PK\x03\x04" + bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 2:  # a real zip around a fuzzer-chosen manifest and names
        return _zip(fdp, None)
    if mode == 3:  # a real zip whose manifest is raw fuzzer bytes
        return _zip(fdp, bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))))
    # mode 4: a valid bundle, then byte edits (flip, overwrite, insert, delete)
    files = {
        name: bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
        for name in ("inductor/ab/k.so", "triton/0/x.json")[: fdp.ConsumeIntInRange(0, 2)]
    }
    buf = bytearray(
        bundle.encode(files, torch_version="t", settings={"a": True}, isa="avx2", machine="x86_64", cpu_isa=["a"])
    )
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        at = fdp.ConsumeIntInRange(0, len(buf))
        edit = fdp.ConsumeIntInRange(0, 3)
        if edit == 0 and at < len(buf):
            buf[at] ^= 1 << fdp.ConsumeIntInRange(0, 7)
        elif edit == 1:
            buf[at : at + 1] = bytes(fdp.ConsumeBytes(1))
        elif edit == 2:
            buf[at:at] = bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 8)))
        else:
            del buf[at : at + fdp.ConsumeIntInRange(1, 8)]
    return bytes(buf)


def _decode_all(data: bytes) -> tuple[bundle.Manifest, dict[str, bytes]]:
    with bundle.decode(data) as opened:
        return opened.manifest, {entry.name: opened.read(entry) for entry in opened.entries}


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' conventional name)
    candidate = _candidate(atheris.FuzzedDataProvider(data))
    try:
        manifest, files = _decode_all(candidate)
    except ArtifactCorruptError:
        return
    for name in files:
        bundle.check_name(name)  # raises (a crash here) if decode let a bad name through
    again = bundle.encode(
        files,
        torch_version=manifest.torch_version,
        settings=manifest.settings,
        isa=manifest.isa,
        machine=manifest.machine or "",
        cpu_isa=manifest.cpu_isa,
    )
    if _decode_all(again)[1] != files:
        raise AssertionError("decoded bundle does not survive a re-encode")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
