"""settings.py: every TORCHKILN_* variable parsed once; a bad value is one ConfigError (what, where, how to fix)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import parse_result, run_script
from torchkiln import settings
from torchkiln.errors import ConfigError, TorchkilnError, UntrustedArtifactError
from torchkiln.settings import signing_key


def test_defaults_when_nothing_is_set() -> None:
    config = settings.current({})
    assert config == settings.Settings()
    assert config.lock_timeout == settings.DEFAULT_LOCK_TIMEOUT and config.signing_key is None


@pytest.mark.parametrize(
    ("raw", "seconds"), [("10", 10.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0), ("500ms", 0.5), (" 2 ", 2.0)]
)
def test_durations(raw: str, seconds: float) -> None:
    assert settings.current({"TORCHKILN_LOCK_TIMEOUT": raw}).lock_timeout == seconds


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("TORCHKILN_LOCK_TIMEOUT", "soon"),
        ("TORCHKILN_LOCK_TIMEOUT", "-1"),
        ("TORCHKILN_REMOTE_TIMEOUT", "0"),
        ("TORCHKILN_REMOTE_TIMEOUT", "inf"),
        ("TORCHKILN_LEASE_TTL", "1e999"),
        ("TORCHKILN_STRICT", "maybe"),
        ("TORCHKILN_LOG", "loud"),
        ("TORCHKILN_CACHE", " "),
        ("TORCHKILN_CACHE", "/tmp/x "),
        ("TORCHKILN_SIGNING_KEY", ""),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings.current({name: raw})
    assert info.value.where and name in info.value.where
    assert info.value.fix and isinstance(info.value, ValueError)


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(ConfigError, match="3 torchkiln settings are invalid") as info:
        settings.current({"TORCHKILN_LOCK_TIMEOUT": "10 minutes", "TORCHKILN_STRICT": "y", "TORCHKILN_LOG": "x"})
    assert info.value.where == "TORCHKILN_STRICT, TORCHKILN_LOG, TORCHKILN_LOCK_TIMEOUT"


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("on", True), ("YES", True), ("0", False), ("", False)])
def test_strict_flag(raw: str, value: bool) -> None:
    assert settings.current({"TORCHKILN_STRICT": raw}).strict is value


@pytest.mark.parametrize(("raw", "level"), [("debug", logging.DEBUG), ("Info", logging.INFO), ("30", 30), ("", None)])
def test_log_levels(raw: str, level: int | None) -> None:
    assert settings.current({"TORCHKILN_LOG": raw}).log_level == level


def test_the_key_is_not_in_repr() -> None:
    assert "hunter2" not in repr(settings.current({"TORCHKILN_SIGNING_KEY": "hunter2"}))


def test_every_variable_is_documented() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "CACHE.md").read_text()
    assert [name for name in settings.VARIABLES if name not in docs] == []


def _key_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "key"
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def test_signing_key_text() -> None:
    assert signing_key({}) is None
    assert signing_key({"TORCHKILN_SIGNING_KEY": "s3cret é"}) == "s3cret é".encode()
    # A non-UTF-8 byte in the environment arrives as a lone surrogate and goes back to the original byte.
    assert signing_key({"TORCHKILN_SIGNING_KEY": "a\udcff"}) == b"a\xff"
    assert isinstance(signing_key(None), (bytes, type(None)))


@pytest.mark.parametrize(
    ("content", "key"), [(b"k1", b"k1"), (b"k1\n", b"k1"), (b"k1\r\n", b"k1"), (b"\0\n\n", b"\0\n")]
)
def test_signing_key_from_file(tmp_path: Path, content: bytes, key: bytes) -> None:
    assert signing_key({"TORCHKILN_SIGNING_KEY_FILE": _key_file(tmp_path, content)}) == key


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644])
def test_signing_key_file_must_be_private(tmp_path: Path, mode: int) -> None:
    path = _key_file(tmp_path, b"k1", mode)
    with pytest.raises(TorchkilnError, match="group or others") as info:
        signing_key({"TORCHKILN_SIGNING_KEY_FILE": path})
    assert info.value.fix == f"chmod 600 {path}" and not isinstance(info.value, UntrustedArtifactError)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"TORCHKILN_SIGNING_KEY": ""}, "empty"),
        ({"TORCHKILN_SIGNING_KEY_FILE": ""}, "empty"),
        ({"TORCHKILN_SIGNING_KEY": "a", "TORCHKILN_SIGNING_KEY_FILE": "/k"}, "both"),
        ({"TORCHKILN_SIGNING_KEY_FILE": "/nonexistent/torchkiln/key"}, "cannot read"),
    ],
)
def test_signing_key_refuses(env: dict[str, str], match: str) -> None:
    with pytest.raises(TorchkilnError, match=match) as info:
        signing_key(env)
    assert info.value.fix


def test_signing_key_file_empty_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(TorchkilnError, match="empty"):
        signing_key({"TORCHKILN_SIGNING_KEY_FILE": _key_file(tmp_path, b"\n")})
    with pytest.raises(TorchkilnError):
        signing_key({"TORCHKILN_SIGNING_KEY_FILE": str(tmp_path)})


_SCRIPT = """
import json, sys, warnings
import torch
import torchkiln
from helpers.models import tiny_mlp

model = tiny_mlp()
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        torchkiln.compile(model, (torch.randn(2, 16),), cache=sys.argv[1])  # THE USER'S LINE
    except Exception as exc:
        out["error"] = type(exc).__name__
        out["message"] = str(exc)
out["compiler_ran"] = "torch._dynamo" in sys.modules
out["warnings"] = [
    {"file": w.filename, "line": w.lineno} for w in caught if issubclass(w.category, torchkiln.TorchkilnWarning)
]
print("TKRESULT " + json.dumps(out))
"""


def _run(tmp_path: Path, cache: str, env: dict[str, str]) -> dict[str, Any]:
    script = tmp_path / "user_script.py"
    script.write_text(_SCRIPT)
    result = parse_result(run_script([str(script), cache], tmp_path / "scratch", extra_env=env).stdout)
    result["script"] = str(script)
    result["line"] = _SCRIPT.splitlines().index(next(x for x in _SCRIPT.splitlines() if "THE USER'S LINE" in x)) + 1
    return result


@pytest.mark.parametrize(
    "env",
    [
        {"TORCHKILN_SIGNING_KEY": ""},
        {"TORCHKILN_SIGNING_KEY_FILE": "/nonexistent/key"},
        {"TORCHKILN_LOCK_TIMEOUT": "10 minutes"},
        {"TORCHKILN_STRICT": "maybe"},
    ],
)
def test_a_bad_setting_fails_before_any_compile(tmp_path: Path, env: dict[str, str]) -> None:
    # Issue 11: an empty TORCHKILN_SIGNING_KEY used to cost a 47 s compile and then crash at publish.
    result = _run(tmp_path, str(tmp_path / "cache"), env)
    assert result["error"] == "ConfigError", result
    assert next(iter(env)) in result["message"]
    assert result["compiler_ran"] is False
    assert not (tmp_path / "cache" / "v1").exists() or not list((tmp_path / "cache" / "v1").glob("*.tkln"))


def test_a_fallback_warning_points_at_the_users_line(tmp_path: Path) -> None:
    cache = tmp_path / "not-private"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)  # a group/world-writable cache is refused: a StoreError, then a fallback warning
    result = _run(tmp_path, str(cache), {})
    assert "error" not in result, result
    assert result["warnings"], result
    assert all(w == {"file": result["script"], "line": result["line"]} for w in result["warnings"]), result
