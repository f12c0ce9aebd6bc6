"""Tests for the artifact byte format (src/torchkiln/artifact.py, spec in docs/FORMAT.md).

Properties are checked with hypothesis (bounded: 200 examples, no deadline); truncations and single-bit flips
are checked exhaustively, every length and every bit, on small artifacts. Malformed files are forged with a
correct header digest so that each check behind the digest is reached, not just the digest itself.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import hmac
import importlib
import json
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkiln import artifact
from torchkiln.artifact import (
    FORMAT_VERSION,
    MAGIC,
    MAX_HEADER_BYTES,
    PREAMBLE_BYTES,
    SIGNATURE_BYTES,
    Artifact,
    ArtifactEncodeError,
    decode,
    encode,
    peek_header,
)
from torchkiln.errors import (
    ArtifactCorruptError,
    IncompatibleArtifactError,
    TorchkilnError,
    UntrustedArtifactError,
)

PROPERTY = settings(max_examples=200, deadline=None)
KEY = b"k" * 32
DECODE_ERRORS = (ArtifactCorruptError, IncompatibleArtifactError, UntrustedArtifactError)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
headers = st.dictionaries(
    st.text(max_size=16).filter(lambda k: k not in ("format_version", "sections")), json_values, max_size=5
)
section_names = st.from_regex(r"[a-z0-9_]{1,32}", fullmatch=True)
section_maps = st.dictionaries(section_names, st.binary(max_size=200), max_size=4)
small_headers = st.dictionaries(st.sampled_from(["a", "fingerprint", "z"]), json_scalars, max_size=2)
small_sections = st.dictionaries(st.sampled_from(["payload", "kernels", "x"]), st.binary(max_size=24), max_size=2)
keys = st.none() | st.binary(min_size=1, max_size=40)


def forge(
    header: Any,
    data: bytes = b"",
    *,
    flags: int = 0,
    version: int = FORMAT_VERSION,
    header_length: int | None = None,
    tail: bytes = b"",
) -> bytes:
    """Build a file by hand, with a *correct* header digest, so the checks behind the digest are reached."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    length = len(raw) if header_length is None else header_length
    prefix = struct.pack("<4sHHI", MAGIC, version, flags, length)
    return prefix + hashlib.sha256(prefix + raw).digest() + raw + data + tail


def table(*entries: tuple[str, int, int, bytes | str]) -> dict[str, Any]:
    rows = [
        {
            "name": name,
            "offset": offset,
            "length": length,
            "sha256": blob if isinstance(blob, str) else hashlib.sha256(blob).hexdigest(),
        }
        for name, offset, length, blob in entries
    ]
    return {"format_version": 1, "sections": rows}


def expected_flip_error(position: int, size: int, signed: bool, key: bytes | None) -> type[Exception] | None:
    """docs/FORMAT.md section 6: what a reader must say about a flipped bit at byte ``position``."""
    if 4 <= position < 6:
        return IncompatibleArtifactError
    if signed and position >= size - SIGNATURE_BYTES:
        return UntrustedArtifactError if key is not None else None
    return ArtifactCorruptError


def check_every_truncation(data: bytes, key: bytes | None) -> None:
    for length in range(len(data)):
        with pytest.raises(ArtifactCorruptError):
            decode(data[:length], signing_key=key)


def check_every_bit_flip(data: bytes, signed: bool, key: bytes | None) -> None:
    buf = bytearray(data)
    for position in range(len(data)):
        expected = expected_flip_error(position, len(data), signed, key)
        for bit in range(8):
            buf[position] ^= 1 << bit
            try:
                decode(bytes(buf), signing_key=key)
            except DECODE_ERRORS as exc:
                assert type(exc) is expected, (position, bit, exc)
            else:
                assert expected is None, (position, bit)
            buf[position] ^= 1 << bit


# --- round trip -----------------------------------------------------------------------------------------


@PROPERTY
@given(header=headers, sections=section_maps, key=keys)
def test_round_trip(header: dict[str, Any], sections: dict[str, bytes], key: bytes | None) -> None:
    data = encode(header, sections, signing_key=key)
    assert data[:4] == MAGIC
    assert encode(header, sections, signing_key=key) == data  # canonical: same input, same bytes
    for reader_key in {None, key}:
        got = decode(data, signing_key=reader_key, where="mem")
        assert got == Artifact(header=header, sections=sections, signed=key is not None)
    full = peek_header(data)
    assert full["format_version"] == FORMAT_VERSION
    assert [row["name"] for row in full["sections"]] == list(sections)
    assert {k: v for k, v in full.items() if k not in ("format_version", "sections")} == header


def test_layout_matches_spec() -> None:
    data = encode({"a": 1}, {"payload": b"abc", "kernels": b"de"}, signing_key=KEY)
    magic, version, flags, length = struct.unpack_from("<4sHHI", data)
    assert (magic, version, flags) == (b"TKLN", 1, 1)
    raw = data[PREAMBLE_BYTES : PREAMBLE_BYTES + length]
    assert raw == b'{"a":1,"format_version":1,"sections":[' + raw.split(b"[", 1)[1]
    assert data[12:44] == hashlib.sha256(data[:12] + raw).digest()
    assert data[PREAMBLE_BYTES + length : -SIGNATURE_BYTES] == b"abcde"
    assert data[-SIGNATURE_BYTES:] == hmac.new(KEY, data[:-SIGNATURE_BYTES], "sha256").digest()
    assert len(data) == PREAMBLE_BYTES + length + 5 + SIGNATURE_BYTES


def test_decode_accepts_bytes_like() -> None:
    data = encode({}, {"payload": b"x"})
    assert decode(bytearray(data)).sections == {"payload": b"x"}  # type: ignore[arg-type]
    assert decode(memoryview(data)).sections == {"payload": b"x"}  # type: ignore[arg-type]


def test_repr_shows_sizes_not_bytes() -> None:
    text = repr(decode(encode({"k": 1}, {"payload": b"secret" * 100})))
    assert "payload=600B" in text
    assert "secret" not in text


# --- truncation and bit flips ---------------------------------------------------------------------------

FIXED = [
    ({}, {}),
    ({"a": 1}, {"payload": b"p"}),
    ({"fingerprint": {"torch": "2.13.0"}}, {"payload": b"\x80\x04pickle", "kernels": b""}),
]


@pytest.mark.parametrize(("header", "sections"), FIXED)
@pytest.mark.parametrize("key", [None, KEY])
def test_every_truncation_fixed(header: dict[str, Any], sections: dict[str, bytes], key: bytes | None) -> None:
    for writer_key in (None, KEY):
        check_every_truncation(encode(header, sections, signing_key=writer_key), key)


@pytest.mark.parametrize(("header", "sections"), FIXED)
@pytest.mark.parametrize(("signed", "key"), [(False, None), (True, None), (True, KEY)])
def test_every_bit_flip_fixed(
    header: dict[str, Any], sections: dict[str, bytes], signed: bool, key: bytes | None
) -> None:
    check_every_bit_flip(encode(header, sections, signing_key=KEY if signed else None), signed, key)


@PROPERTY
@given(header=small_headers, sections=small_sections, signed=st.booleans(), with_key=st.booleans())
def test_every_truncation(header: dict[str, Any], sections: dict[str, bytes], signed: bool, with_key: bool) -> None:
    check_every_truncation(encode(header, sections, signing_key=KEY if signed else None), KEY if with_key else None)


@PROPERTY
@given(header=small_headers, sections=small_sections, signed=st.booleans(), with_key=st.booleans())
def test_every_bit_flip(header: dict[str, Any], sections: dict[str, bytes], signed: bool, with_key: bool) -> None:
    key = KEY if (signed and with_key) else None  # unsigned + key is its own test below
    check_every_bit_flip(encode(header, sections, signing_key=KEY if signed else None), signed, key)


@PROPERTY
@given(blob=st.binary(max_size=300), key=keys)
def test_arbitrary_bytes_only_raise_decode_errors(blob: bytes, key: bytes | None) -> None:
    for candidate in (blob, MAGIC + blob, MAGIC + b"\x01\x00" + blob):
        with pytest.raises(DECODE_ERRORS):
            decode(candidate, signing_key=key)


@PROPERTY
@given(
    header=small_headers,
    sections=small_sections,
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=3), st.integers(0, 3)), min_size=1),
)
def test_spliced_artifacts_only_raise_decode_errors(
    header: dict[str, Any], sections: dict[str, bytes], edits: list[tuple[int, bytes, int]]
) -> None:
    data = bytearray(encode(header, sections))
    for position, insert, delete in edits:
        at = position % (len(data) + 1)
        data[at : at + delete] = insert
    try:
        got = decode(bytes(data))
    except DECODE_ERRORS:
        return
    assert got == Artifact(header=header, sections=sections, signed=False)  # only an identity edit decodes


# --- signatures -----------------------------------------------------------------------------------------


def test_signature_policy() -> None:
    unsigned = encode({"a": 1}, {"payload": b"p"})
    signed = encode({"a": 1}, {"payload": b"p"}, signing_key=KEY)
    assert decode(signed).signed and not decode(unsigned).signed
    assert decode(signed, signing_key=KEY).sections == {"payload": b"p"}
    with pytest.raises(UntrustedArtifactError, match="unsigned"):
        decode(unsigned, signing_key=KEY, where="key-abc")
    with pytest.raises(UntrustedArtifactError, match="does not match"):
        decode(signed, signing_key=b"another key", where="key-abc")


def test_resigning_with_stripped_flag_is_caught() -> None:
    # An attacker without the key drops the signature and clears the flag: the header digest covers flags,
    # and a reader with a key refuses unsigned files anyway.
    signed = encode({"a": 1}, {"payload": b"p"}, signing_key=KEY)
    stripped = bytearray(signed[:-SIGNATURE_BYTES])
    stripped[6] = 0
    with pytest.raises(ArtifactCorruptError, match="header sha256"):
        decode(bytes(stripped), signing_key=KEY)


# --- forged files: every check behind the header digest ---------------------------------------------------

GOOD = table(("payload", 0, 3, b"abc"))
CORRUPT_CASES: dict[str, bytes] = {
    "bad magic": b"TKLX" + forge(GOOD, b"abc")[4:],
    "not an artifact": b"\x80\x04\x95pickle",
    "reserved flag bit": forge(GOOD, b"abc", flags=0x0002),
    "header length 0": forge(b"", flags=0),
    "header length 1": forge(b"{"),
    "header length over cap": forge(GOOD, b"abc", header_length=MAX_HEADER_BYTES + 1),
    "header length 2^32-1": forge(GOOD, b"abc", header_length=2**32 - 1),
    "header digest": forge(GOOD, b"abc")[:12] + b"\0" * 32 + forge(GOOD, b"abc")[44:],
    "invalid utf-8": forge(b'{"a":"\xff"}'),
    "byte order mark": forge(b"\xef\xbb\xbf{}"),
    "not json": forge(b"{nope}"),
    "NaN": forge(b'{"a":NaN,"format_version":1,"sections":[]}'),
    "Infinity": forge(b'{"a":-Infinity,"format_version":1,"sections":[]}'),
    "duplicate key": forge(b'{"format_version":1,"format_version":1,"sections":[]}'),
    "nested duplicate key": forge(b'{"a":{"b":1,"b":2},"format_version":1,"sections":[]}'),
    "deep nesting": forge(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "top level list": forge([]),
    "no format_version": forge({"sections": []}),
    "format_version true": forge({"format_version": True, "sections": []}),
    "format_version 2 in header": forge({"format_version": 2, "sections": []}),
    "format_version string": forge({"format_version": "1", "sections": []}),
    "no sections": forge({"format_version": 1}),
    "sections not a list": forge({"format_version": 1, "sections": {}}),
    "entry not an object": forge({"format_version": 1, "sections": [1]}),
    "entry extra key": forge({"format_version": 1, "sections": [{**GOOD["sections"][0], "compressed": True}]}, b"abc"),
    "entry missing key": forge({"format_version": 1, "sections": [{"name": "payload"}]}, b"abc"),
    "bad name": forge(table(("Payload", 0, 3, b"abc")), b"abc"),
    "name too long": forge(table(("p" * 33, 0, 3, b"abc")), b"abc"),
    "duplicate name": forge(table(("p", 0, 1, b"a"), ("p", 1, 2, b"bc")), b"abc"),
    "negative length": forge(table(("p", 0, -1, b"")), b""),
    "float length": forge(table(("p", 0, 3.0, b"abc")), b"abc"),  # type: ignore[arg-type]
    "bool length": forge(table(("p", 0, True, b"a")), b"a"),
    "length over cap": forge(table(("p", 0, 2**32 + 1, b"")), b""),
    "length 2^62": forge(table(("p", 0, 2**62, b"")), b""),
    "gap": forge(table(("a", 0, 1, b"a"), ("b", 2, 1, b"c")), b"abc"),
    "overlap": forge(table(("a", 0, 2, b"ab"), ("b", 1, 2, b"bc")), b"abc"),
    "out of order": forge(table(("b", 1, 2, b"bc"), ("a", 0, 1, b"a")), b"abc"),
    "uppercase sha256": forge(table(("p", 0, 3, hashlib.sha256(b"abc").hexdigest().upper())), b"abc"),
    "short sha256": forge(table(("p", 0, 3, "ab")), b"abc"),
    "sha256 mismatch": forge(table(("p", 0, 3, b"abd")), b"abc"),
    "trailing byte": forge(GOOD, b"abc", tail=b"\0"),
    "missing data": forge(GOOD, b"ab"),
    "signed flag without signature": forge(GOOD, b"abc", flags=1),
    "unsigned with signature bytes": forge(GOOD, b"abc", tail=b"\0" * 32),
}


def test_forge_helper_builds_valid_files() -> None:
    assert decode(forge(GOOD, b"abc")).sections == {"payload": b"abc"}
    assert decode(forge(table(), b"")).sections == {}


@pytest.mark.parametrize("name", sorted(CORRUPT_CASES))
@pytest.mark.parametrize("key", [None, KEY])
def test_forged_file_is_corrupt(name: str, key: bytes | None) -> None:
    with pytest.raises(ArtifactCorruptError) as info:
        decode(CORRUPT_CASES[name], signing_key=key, where="/cache/v1/k.tkln")
    assert info.value.where == "/cache/v1/k.tkln"
    assert info.value.fix


@pytest.mark.parametrize("version", [0, 2, 0xFFFF])
def test_unknown_version_is_incompatible(version: int) -> None:
    data = forge(GOOD, b"abc", version=version)
    for call in (lambda: decode(data, where="f"), lambda: peek_header(data, where="f")):
        with pytest.raises(IncompatibleArtifactError, match=f"version {version}") as info:
            call()
        assert info.value.where == "f" and "upgrade torchkiln" in str(info.value)
    # Bytes after the version are never interpreted: garbage there is still "incompatible", not "corrupt".
    with pytest.raises(IncompatibleArtifactError):
        decode(MAGIC + b"\x02\x00" + b"garbage")


def test_huge_integer_in_header_is_not_a_crash() -> None:
    # Python >= 3.11 refuses to parse ints over 4300 digits (a ValueError, so: corrupt); 3.10 parses them.
    data = forge(b'{"a":' + b"9" * 5000 + b',"format_version":1,"sections":[]}')
    with contextlib.suppress(ArtifactCorruptError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        forge(table(("p", 0, 2**40, b"")), b"x"),
        forge(table(("p", 0, 2**32, b""), ("q", 2**32, 2**32, b"")), b"x"),
        forge(GOOD, b"abc", header_length=MAX_HEADER_BYTES),
        forge(GOOD, b"abc", header_length=2**32 - 1),
    ],
    ids=["one 1TiB section", "two 4GiB sections", "16MiB header", "4GiB header"],
)
def test_huge_declared_lengths_allocate_nothing(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ArtifactCorruptError):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak  # a few small objects, never the declared sizes


def test_peek_header_reads_a_prefix_and_skips_section_hashes() -> None:
    data = encode({"torch_version": "2.13.0"}, {"payload": b"p" * 1000})
    length = struct.unpack_from("<I", data, 8)[0]
    assert peek_header(data[: PREAMBLE_BYTES + length])["torch_version"] == "2.13.0"
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    assert peek_header(damaged)["torch_version"] == "2.13.0"  # sections are decode()'s job
    with pytest.raises(ArtifactCorruptError):
        decode(damaged)
    with pytest.raises(ArtifactCorruptError, match="truncated"):
        peek_header(data[: PREAMBLE_BYTES + length - 1])


# --- encode's refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "sections", "key", "match"),
    [
        ({"sections": []}, {}, None, "reserved"),
        ({"format_version": 1}, {}, None, "reserved"),
        ({"a": float("nan")}, {}, None, "JSON"),
        ({"a": object()}, {}, None, "JSON"),
        ({}, {"Payload": b""}, None, "section name"),
        ({}, {"": b""}, None, "section name"),
        ({}, {"p" * 33: b""}, None, "section name"),
        ({}, {"payload": "text"}, None, "bytes-like"),
        ({}, {}, b"", "signing_key"),
        ({"a": "x" * MAX_HEADER_BYTES}, {}, None, "cap"),
        (["not a mapping"], {}, None, "mapping"),
    ],
)
def test_encode_refuses(header: Any, sections: Any, key: bytes | None, match: str) -> None:
    with pytest.raises(ArtifactEncodeError, match=match) as info:
        encode(header, sections, signing_key=key)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TorchkilnError)


def test_section_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real cap is 4 GiB; lowering the module constant tests both sides of the check without allocating.
    monkeypatch.setattr(artifact, "MAX_SECTION_BYTES", 4)
    with pytest.raises(ArtifactEncodeError, match="cap"):
        encode({}, {"p": b"12345"})
    with pytest.raises(ArtifactCorruptError, match="length 5"):
        decode(forge(table(("p", 0, 5, b"12345")), b"12345"))
    assert decode(encode({}, {"p": b"1234"})).sections == {"p": b"1234"}


# --- errors ---------------------------------------------------------------------------------------------


def _raised(data: bytes, key: bytes | None = None) -> TorchkilnError:
    try:
        decode(data, signing_key=key, where="/cache/v1/abc.tkln")
    except TorchkilnError as exc:
        return exc
    raise AssertionError("decode did not raise")


@pytest.mark.parametrize(
    "error",
    [
        _raised(b"TKLN"),
        _raised(forge(GOOD, b"abc", version=9)),
        _raised(encode({}, {}), key=KEY),
        ArtifactEncodeError("x", where="header", fix="y"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_copy_and_explain_themselves(error: TorchkilnError) -> None:
    text = str(error)
    assert error.where and error.where in text
    assert error.fix and error.fix in text
    # copy.deepcopy goes through __reduce__, the path pickle takes (pickle is lint-forbidden in tests).
    clone = copy.deepcopy(error)
    assert type(clone) is type(error)
    assert (clone.what, clone.where, clone.fix) == (error.what, error.where, error.fix)
    reducer = error.__reduce__()[0]
    assert getattr(importlib.import_module(reducer.__module__), reducer.__qualname__) is reducer


# --- signing key from the environment -------------------------------------------------------------------
