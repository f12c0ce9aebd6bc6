"""Tests for the kernel bundle codec (src/torchkiln/kernels/bundle.py; spec: docs/FORMAT.md section 9).

Properties are checked with hypothesis (bounded: 200 examples, no deadline), as for the artifact codec
(tests/test_artifact.py): a round trip returns what was encoded; a truncation always raises ArtifactCorruptError; a
bit flip raises ArtifactCorruptError or, where it lands in zip metadata no reader uses or in deflate framing
(docs/FORMAT.md section 9.7), decodes to exactly the same manifest and files; arbitrary bytes, hostile names and
hostile manifests raise ArtifactCorruptError and nothing else. "Decodes" always means decode plus reading every
file, since file bytes are only checked when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from torchkiln.errors import ArtifactCorruptError
from torchkiln.kernels import bundle, install

from .fakes import raw_zip

PROPERTY = settings(max_examples=200, deadline=None)

_part = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12).filter(
    lambda p: p not in (".", "..")
)
names = st.builds(
    lambda root, parts: "/".join([root, *parts]), st.sampled_from(bundle.ROOTS), st.lists(_part, min_size=1, max_size=3)
)
file_maps = st.dictionaries(names, st.binary(max_size=200), max_size=5)
small_maps = st.dictionaries(names, st.binary(max_size=24), min_size=1, max_size=2)
fields = st.fixed_dictionaries(
    {
        "torch_version": st.text(max_size=12),
        "settings": st.dictionaries(st.text(max_size=8), st.booleans(), max_size=2),
        "isa": st.none() | st.text(max_size=8),
        "machine": st.text(max_size=8),
        "cpu_isa": st.none() | st.lists(st.text(max_size=6), max_size=3),
    }
)
FIELDS: dict[str, Any] = {
    "torch_version": "2.13.0",
    "settings": {"cpp_cache_precompile_headers": False},
    "isa": "avx2",
    "machine": "x86_64",
    "cpu_isa": ["avx", "avx2"],
}
SMALL = {"inductor/ab/k.so": b"\x7fELF" * 8, "triton/0/x.json": b"{}"}


def decode_all(data: bytes) -> tuple[bundle.Manifest, dict[str, bytes]]:
    """Decode and read every file: what a restore onto an empty cache does."""
    with bundle.decode(data) as opened:
        return opened.manifest, {entry.name: opened.read(entry) for entry in opened.entries}


def only_corrupt_or_same(data: bytes, expected: tuple[bundle.Manifest, dict[str, bytes]] | None = None) -> None:
    try:
        got = decode_all(data)
    except ArtifactCorruptError:
        return
    if expected is not None:
        assert got == expected


# -- round trip ---------------------------------------------------------------------------------------------------
@PROPERTY
@given(files=file_maps, fields=fields)
def test_round_trip(files: dict[str, bytes], fields: dict[str, Any]) -> None:
    data = bundle.encode(files, **fields)
    assert bundle.encode(files, **fields) == data  # deterministic
    manifest, read = decode_all(data)
    assert read == files
    assert [e.name for e in manifest.files] == sorted(files)
    assert manifest.torch_version == fields["torch_version"]
    assert manifest.settings == fields["settings"]
    assert manifest.isa == fields["isa"]
    assert manifest.machine == fields["machine"]
    assert manifest.cpu_isa == (None if fields["cpu_isa"] is None else tuple(fields["cpu_isa"]))
    assert manifest.legacy_cpu is None


def test_layout_matches_spec() -> None:
    data = bundle.encode(SMALL, **FIELDS)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [bundle.MANIFEST, *sorted(SMALL)]
        for info in infos:
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.compress_type == zipfile.ZIP_DEFLATED
            assert info.create_system == 3
            assert info.external_attr == (stat.S_IFREG | 0o644) << 16
            assert info.comment == b"" and info.extra == b""
        raw = zf.read(bundle.MANIFEST)
    manifest = json.loads(raw)
    assert raw == json.dumps(manifest, sort_keys=True).encode()
    assert manifest == {
        "format": 1,
        "torch": "2.13.0",
        "settings": {"cpp_cache_precompile_headers": False},
        "isa": "avx2",
        "machine": "x86_64",
        "cpu_isa": ["avx", "avx2"],
        "files": {n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in SMALL.items()},
    }


def test_empty_bundle_and_legacy_manifest_decode() -> None:
    assert decode_all(bundle.encode({}, **FIELDS))[1] == {}
    legacy = {  # what torchkiln wrote before cpu_isa and machine: a CPU digest, no machine
        "format": 1,
        "torch": "2.11.0",
        "settings": {"cpp_cache_precompile_headers": False},
        "isa": None,
        "cpu": "0123456789abcdef",
        "files": {"inductor/a/b.so": {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}},
    }
    manifest, files = decode_all(raw_zip([("inductor/a/b.so", b"x")], manifest=legacy))
    assert manifest.legacy_cpu == "0123456789abcdef"
    assert (manifest.cpu_isa, manifest.machine, manifest.isa) == (None, None, None)
    assert files == {"inductor/a/b.so": b"x"}


# -- damage -------------------------------------------------------------------------------------------------------
def test_every_truncation_fixed() -> None:
    data = bundle.encode(SMALL, **FIELDS)
    for n in range(len(data)):
        with pytest.raises(ArtifactCorruptError):
            decode_all(data[:n])


def _member_data_ranges(data: bytes) -> list[range]:
    """Where each member's (compressed) bytes lie, the manifest's included."""
    ranges = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            ranges.append(range(start, start + info.compress_size))
    return ranges


def test_every_bit_flip_fixed() -> None:
    data = bundle.encode(SMALL, **FIELDS)
    expected = decode_all(data)
    content = _member_data_ranges(data)
    survived = []
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            try:
                got = decode_all(bytes(flipped))
            except ArtifactCorruptError:
                continue
            assert got == expected, (position, bit)
            survived.append((position, bit))
    # What survives is zip metadata no reader uses (timestamps, versions, permission bits, the local headers' copies
    # of the central directory's fields) and, inside a member's deflate stream, only its framing: the first block's
    # BFINAL bit and the end-of-block code and padding in its last two bytes (the reader stops at the declared size,
    # and CRC-32 covers every byte it returns). No flip anywhere changes what decodes.
    assert survived
    not_framing = [
        (p, b) for p, b in survived for r in content if p in r and not ((p == r.start and b == 0) or p >= r.stop - 2)
    ]
    assert not_framing == []


@PROPERTY
@given(files=small_maps, fields=fields, cut=st.integers(min_value=0))
def test_truncation(files: dict[str, bytes], fields: dict[str, Any], cut: int) -> None:
    data = bundle.encode(files, **fields)
    with pytest.raises(ArtifactCorruptError):
        decode_all(data[: cut % len(data)])


@PROPERTY
@given(files=small_maps, fields=fields, flips=st.lists(st.tuples(st.integers(0), st.integers(0, 7)), min_size=1))
def test_bit_flips(files: dict[str, bytes], fields: dict[str, Any], flips: list[tuple[int, int]]) -> None:
    data = bytearray(bundle.encode(files, **fields))
    expected = decode_all(bytes(data))
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    only_corrupt_or_same(bytes(data), expected)


@PROPERTY
@given(blob=st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_corrupt(blob: bytes) -> None:
    only_corrupt_or_same(blob)
    only_corrupt_or_same(b"PK\x03\x04" + blob)


@PROPERTY
@given(files=small_maps, at=st.integers(0), junk=st.binary(min_size=1, max_size=16), delete=st.booleans())
def test_spliced_bundles_only_raise_corrupt(files: dict[str, bytes], at: int, junk: bytes, delete: bool) -> None:
    data = bytearray(bundle.encode(files, **FIELDS))
    at %= len(data)
    if delete:
        del data[at : at + len(junk)]
    else:
        data[at:at] = junk
    only_corrupt_or_same(bytes(data))


# -- hostile names ------------------------------------------------------------------------------------------------
@PROPERTY
@given(name=st.text(max_size=40) | st.builds(lambda r, t: f"{r}/{t}", st.sampled_from(bundle.ROOTS), st.text()))
def test_hostile_names_never_leave_the_cache_dirs(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    try:
        data = raw_zip([("inductor/ok.so", b"ok"), (name, b"evil")])
    except (ValueError, UnicodeEncodeError):  # a name the zip writer itself refuses (surrogates)
        return
    try:
        _, files = decode_all(data)
    except ArtifactCorruptError:
        return
    dirs = [Path("/cache/inductor"), Path("/cache/triton")]
    for stored in files:
        target = os.path.normpath(install.target_path(stored, dirs))
        assert any(target.startswith(f"{d}{os.sep}") for d in dirs), (stored, target)


@pytest.mark.parametrize("name", ["", "inductor", "x/y", "inductor/a\\b", "inductor/a/../b", "/inductor/a", "C:/x"])
def test_encode_refuses_bad_names(name: str) -> None:
    with pytest.raises(ArtifactCorruptError, match="plain relative path"):
        bundle.encode({name: b"x"}, **FIELDS)


# -- hostile structure and manifests ------------------------------------------------------------------------------
def _entry_meta(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _with_manifest(**changes: Any) -> bytes:
    manifest: dict[str, Any] = {"format": 1, "files": {"inductor/a.so": _entry_meta(b"x")}}
    manifest.update(changes)
    return raw_zip([("inductor/a.so", b"x")], manifest={k: v for k, v in manifest.items() if v is not _DROP})


_DROP = object()

HOSTILE_MANIFESTS = {
    "format true": {"format": True},
    "format 1.0": {"format": 1.0},
    "format 2": {"format": 2},
    "no files": {"files": _DROP},
    "files a list": {"files": [["inductor/a.so", 1]]},
    "size a bool": {"files": {"inductor/a.so": {"size": True, "sha256": hashlib.sha256(b"x").hexdigest()}}},
    "size a string": {"files": {"inductor/a.so": {"size": "1", "sha256": hashlib.sha256(b"x").hexdigest()}}},
    "no sha256": {"files": {"inductor/a.so": {"size": 1}}},
    "sha256 uppercase": {"files": {"inductor/a.so": {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest().upper()}}},
    "sha256 a number": {"files": {"inductor/a.so": {"size": 1, "sha256": 7}}},
    "entry not an object": {"files": {"inductor/a.so": 1}},
    "settings a string": {"settings": "ab"},
    "settings a list of pairs": {"settings": [["cpp_cache_precompile_headers", False]]},
    "settings not booleans": {"settings": {"cpp_cache_precompile_headers": "false"}},
    "isa a number": {"isa": 3},
    "machine a list": {"machine": ["x86_64"]},
    "cpu_isa a string": {"cpu_isa": "avx2"},
    "cpu_isa of numbers": {"cpu_isa": [1, 2]},
    "cpu a number": {"cpu": 12},
    "torch a number": {"torch": 2.13},
    "extra file in manifest": {"files": {"inductor/a.so": _entry_meta(b"x"), "inductor/b.so": _entry_meta(b"y")}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_fields_are_corrupt(case: str) -> None:
    with pytest.raises(ArtifactCorruptError):
        decode_all(_with_manifest(**HOSTILE_MANIFESTS[case]))


def _zip_with_manifest_bytes(raw: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(bundle.MANIFEST, raw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[1, 2]",
        b"\xff\xfe{}",
        json.dumps({"format": 1, "files": {}}).encode("utf-16"),
        b'{"format": 1, "files": {}, "isa": NaN}',
        b'{"format": 1, "format": 1, "files": {}}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["empty", "list", "not utf-8", "utf-16", "NaN", "duplicate key", "deep nesting"],
)
def test_unreadable_manifests_are_corrupt(raw: bytes) -> None:
    with pytest.raises(ArtifactCorruptError, match=r"MANIFEST\.json|format"):
        decode_all(_zip_with_manifest_bytes(raw))


def _zip_entries(*entries: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name a case writes on purpose
        for info, data in entries:
            zf.writestr(info, data)
    return buf.getvalue()


def _info(name: str, **attrs: Any) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _manifest_for(*names_and_data: tuple[str, bytes]) -> bytes:
    return json.dumps({"format": 1, "files": {n: _entry_meta(d) for n, d in names_and_data}}).encode()


_GOOD = ("inductor/a.so", b"x")
STRUCTURAL_FAULTS = {
    "not a zip": lambda: b"not a zip",
    "empty zip": _zip_entries,
    "manifest not first": lambda: _zip_entries(_GOOD, (bundle.MANIFEST, _manifest_for(_GOOD))),
    "duplicate entry": lambda: _zip_entries((bundle.MANIFEST, _manifest_for(_GOOD)), _GOOD, _GOOD),
    "a directory": lambda: _zip_entries(
        (bundle.MANIFEST, _manifest_for(("inductor/d/", b""))), (_info("inductor/d/"), b"")
    ),
    "bzip2": lambda: _zip_entries(
        (bundle.MANIFEST, _manifest_for(_GOOD)), (_info(_GOOD[0], compress_type=zipfile.ZIP_BZIP2), _GOOD[1])
    ),
    "encrypted flag": lambda: _zip_entries(
        (bundle.MANIFEST, _manifest_for(_GOOD)), (_info(_GOOD[0], flag_bits=0x1), _GOOD[1])
    ),
    "a symlink": lambda: _zip_entries(
        (bundle.MANIFEST, _manifest_for(_GOOD)), (_info(_GOOD[0], external_attr=(stat.S_IFLNK | 0o777) << 16), b"x")
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURAL_FAULTS))
def test_structural_faults_are_corrupt(case: str) -> None:
    with pytest.raises(ArtifactCorruptError):
        decode_all(STRUCTURAL_FAULTS[case]())


def test_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {f"inductor/{i}.so": bytes(1000) for i in range(3)}
    data = bundle.encode(files, **FIELDS)
    decode_all(data)
    monkeypatch.setattr(bundle, "MAX_FILES", 2)
    with pytest.raises(ArtifactCorruptError, match="file table"):
        decode_all(data)
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 999)  # the manifest itself is smaller
    with pytest.raises(ArtifactCorruptError, match="over 999 bytes"):
        decode_all(data)
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "MAX_TOTAL_BYTES", 2999)
    with pytest.raises(ArtifactCorruptError, match="expands to 3000 bytes"):
        decode_all(data)
    monkeypatch.undo()
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 100)  # the manifest is capped like any file
    with pytest.raises(ArtifactCorruptError, match="MANIFEST"):
        decode_all(data)
