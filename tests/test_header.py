"""header.py: the ArtifactHeader schema round-trips, and a header of the wrong shape is refused as corrupt."""

from __future__ import annotations

from typing import Any

import pytest

from torchkiln.cache_key import CacheKey, KeyPart, _combine
from torchkiln.errors import ArtifactCorruptError
from torchkiln.fingerprint import Fingerprint
from torchkiln.header import ArtifactHeader


def _header() -> ArtifactHeader:
    parts = (KeyPart.of("format", 1), KeyPart.of("target", {"qualname": "m.Net"}))
    return ArtifactHeader(
        torchkiln_version="0.0.0",
        created_at="2026-12-02T00:00:00+00:00",
        target="m.Net",
        is_module=True,
        device_type="cpu",
        cache_key=CacheKey(_combine("Net", parts), parts),
        fingerprint=Fingerprint.current(),
        fixes_applied=("builtins-runtime-env",),
        guards=({"name": "L['x']", "guard_type": "TENSOR_MATCH", "fate": "kept"},),
        guard_globals={"G['torch']": "module torch"},
        inlined_sources=({"module": "m", "first_line": 1, "last_line": 3, "sha256": "0" * 64},),
        compile_seconds={"dynamo": 1.5},
    )


def test_round_trip_keeps_every_field_and_unknown_keys() -> None:
    header = _header()
    data = header.to_dict() | {"added_by_a_newer_torchkiln": [1, 2], "format_version": 1, "sections": []}
    back = ArtifactHeader.from_dict(data)
    assert back == header
    assert back.key == header.cache_key.key
    assert back.to_dict()["added_by_a_newer_torchkiln"] == [1, 2]
    assert "sections" not in back.to_dict()  # the codec's reserved keys are the codec's


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("target", 3),
        ("is_module", 1),
        ("cache_key", []),
        ("fixes_applied", "builtins-runtime-env"),
        ("guards", [["L['x']"]]),
        ("guard_globals", {"G['torch']": 1}),
        ("compile_seconds", {"dynamo": True}),
        ("created_at", None),
    ],
)
def test_a_field_of_the_wrong_type_is_corrupt(field: str, value: Any) -> None:
    data = _header().to_dict() | {field: value}
    with pytest.raises(ArtifactCorruptError, match=repr(field)) as info:
        ArtifactHeader.from_dict(data, where="k.tkln")
    assert info.value.where == "k.tkln" and info.value.fix


def test_a_missing_field_is_corrupt() -> None:
    data = _header().to_dict()
    del data["fingerprint"]
    with pytest.raises(ArtifactCorruptError, match="'fingerprint' is not an object \\(missing\\)"):
        ArtifactHeader.from_dict(data)
