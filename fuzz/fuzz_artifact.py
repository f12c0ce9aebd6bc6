"""atheris fuzz target for the artifact codec: ``decode`` and ``peek_header`` never raise anything else.

The property: whatever the bytes, ``torchkiln.artifact.decode`` returns a verified Artifact or raises
ArtifactCorruptError, IncompatibleArtifactError or UntrustedArtifactError; ``peek_header`` returns a dict
or raises one of those. Any other exception (IndexError, struct.error, MemoryError, RecursionError,
KeyError, TypeError, ...) is a bug and atheris reports it as a crash with the input that caused it.

Raw fuzzer bytes almost never get past the magic and the header digest, so most inputs are built with the
structure in place (a correct digest over a fuzzer-chosen header, a fuzzer-chosen section table, edits to
a valid artifact) to reach the JSON and section-table checks behind them. See docs/FORMAT.md section 8:

    pip install atheris; python fuzz/fuzz_artifact.py -atheris_runs=100000
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import atheris  # type: ignore[import-not-found,import-untyped,unused-ignore]  # optional, no stubs

with atheris.instrument_imports():
    try:
        from torchkiln import artifact, errors
    except ImportError:  # run from a checkout without installing torchkiln (and torch) into the fuzz venv
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from torchkiln import artifact, errors

ALLOWED = (errors.ArtifactCorruptError, errors.IncompatibleArtifactError, errors.UntrustedArtifactError)
KEY = b"fuzz-signing-key-0123456789abcdef"
NAMES = ["payload", "kernels", "x", "Bad", "", "p" * 33, "payload"]


def _preamble_and_header(raw: bytes, flags: int, version: int = 1) -> bytes:
    prefix = struct.pack("<4sHHI", artifact.MAGIC, version, flags, len(raw))
    return prefix + hashlib.sha256(prefix + raw).digest() + raw


def _fuzzed_table(fdp: Any, data: bytes) -> dict[str, Any]:
    """A section table whose every field may be right or wrong, so each table check gets exercised."""
    rows: list[dict[str, Any]] = []
    offset = 0
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        length = fdp.ConsumeIntInRange(0, len(data) + 2) if fdp.ConsumeBool() else fdp.ConsumeInt(8)
        row_offset = offset if fdp.ConsumeBool() else fdp.ConsumeInt(8)
        blob = data[max(row_offset, 0) : max(row_offset, 0) + max(length, 0)]
        row: dict[str, Any] = {
            "name": NAMES[fdp.ConsumeIntInRange(0, len(NAMES) - 1)],
            "offset": row_offset,
            "length": length if fdp.ConsumeBool() else [length, float(length), str(length), True][length % 4],
            "sha256": hashlib.sha256(blob).hexdigest() if fdp.ConsumeBool() else fdp.ConsumeUnicode(64),
        }
        if fdp.ConsumeIntInRange(0, 9) == 0:
            row.pop(["name", "offset", "length", "sha256"][fdp.ConsumeIntInRange(0, 3)])
        rows.append(row)
        offset = row_offset + length
    version = 1 if fdp.ConsumeBool() else [0, 2, True, "1", None][fdp.ConsumeIntInRange(0, 4)]
    return {"format_version": version, "sections": rows, "k": fdp.ConsumeUnicode(8)}


def _candidate(fdp: Any) -> bytes:
    mode = fdp.ConsumeIntInRange(0, 4)
    flags = fdp.ConsumeIntInRange(0, 3) if fdp.ConsumeBool() else int(fdp.ConsumeBool())
    if mode == 0:  # raw bytes
        return bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 1:  # raw bytes after a valid magic and version
        return artifact.MAGIC + b"\x01\x00" + bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 2:  # raw header bytes behind a correct digest, then raw data
        raw = bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)))
        return _preamble_and_header(raw, flags) + bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
    if mode == 3:  # a JSON section table with fuzzed fields behind a correct digest
        data = bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
        raw = json.dumps(_fuzzed_table(fdp, data)).encode()
        tail = bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 40)))
        return _preamble_and_header(raw, flags) + data + tail
    # mode 4: a valid artifact, then byte edits (flip, overwrite, insert, delete)
    sections = {
        name: bytes(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32)))
        for name in ("payload", "kernels")[: fdp.ConsumeIntInRange(0, 2)]
    }
    header = {"fingerprint": fdp.ConsumeUnicode(16), "n": fdp.ConsumeInt(4)}
    buf = bytearray(artifact.encode(header, sections, signing_key=KEY if fdp.ConsumeBool() else None))
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


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' conventional name)
    fdp = atheris.FuzzedDataProvider(data)
    key = KEY if fdp.ConsumeBool() else None
    candidate = _candidate(fdp)
    try:
        got = artifact.decode(candidate, signing_key=key)
    except ALLOWED:
        pass
    else:
        # Whatever decodes must survive a re-encode unchanged (the header may have been non-canonical JSON).
        again = artifact.decode(artifact.encode(got.header, got.sections, signing_key=KEY if got.signed else None))
        if (again.header, again.sections) != (got.header, got.sections):
            raise AssertionError("decoded artifact does not survive a re-encode")
    with contextlib.suppress(*ALLOWED):
        artifact.peek_header(candidate)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
