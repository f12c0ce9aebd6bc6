"""The cache commands end to end, in-process through ``torchkiln.cli.main``: compile, ls, inspect, verify, explain,
gc and rm, their ``--json`` shapes and exit codes.

Compiling even a tiny module takes 10-60 s on a busy 2-core machine, so one module-scoped fixture compiles the two
targets (a module and a function) once into a shared cache; tests that modify a cache work on a copy of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from torchkiln.cli import main
from torchkiln.cli._cachelib import UsageError, parse_size
from torchkiln.errors import StoreError
from torchkiln.store import LocalStore

_ENV_CLEARED = ("TORCHKILN_CACHE", "TORCHKILN_SIGNING_KEY", "TORCHKILN_SIGNING_KEY_FILE", "TORCHKILN_STRICT")
MODEL = ["cli.targets:build_tiny", "--inputs", "cli.targets:tiny_inputs"]
FUNCTION = ["cli.targets:scale_shift", "--function", "--inputs", "cli.targets:fn_inputs"]


@dataclasses.dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return Result(rc, out.getvalue(), err.getvalue())


@dataclasses.dataclass
class Built:
    cache: Path
    model: dict[str, Any]
    function: dict[str, Any]

    def path(self, key: str, cache: Path | None = None) -> Path:
        return (cache or self.cache) / "v1" / f"{key}.tkln"

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.cache, dest / "cache")
        return dest / "cache"


@contextlib.contextmanager
def _private_env(mp: pytest.MonkeyPatch, root: Path) -> Iterator[None]:
    mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))
    for name in _ENV_CLEARED:
        mp.delenv(name, raising=False)
    yield


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    with _private_env(monkeypatch, tmp_path):
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    root = tmp_path_factory.mktemp("cli_cache")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp, _private_env(mp, root):
        model = cli("compile", *MODEL, "--cache", str(cache), "--json")
        assert model.rc == 0, model.err
        function = cli("compile", *FUNCTION, "--cache", str(cache), "--json")
        assert function.rc == 0, function.err
    return Built(cache, model.json(), function.json())


def test_compile_json_reports_a_published_miss(built: Built) -> None:
    for record, name in ((built.model, "TinyModel-"), (built.function, "scale_shift-")):
        assert record["key"].startswith(name)
        assert record["hit"] is False
        assert record["published"] is True
        assert record["cache"] == str(built.cache)
        assert record["artifact_bytes"] == built.path(record["key"]).stat().st_size
        assert {"key", "compile", "publish", "total"} <= set(record["timings"])


def test_compile_again_is_a_hit(built: Built) -> None:
    result = cli("compile", *MODEL, "--cache", str(built.cache))
    assert result.rc == 0, result.err
    first = result.out.splitlines()[0].split()
    assert first == ["hit", built.model["key"]]
    assert "load" in result.out


def test_ls_json_and_table(built: Built) -> None:
    result = cli("ls", "--cache", str(built.cache), "--json")
    assert result.rc == 0
    report = result.json()
    rows = {row["key"]: row for row in report["artifacts"]}
    assert set(rows) == {built.model["key"], built.function["key"]}
    assert {row["tier"] for row in rows.values()} == {"local"}
    assert report["tiers"] == [
        {"name": "local", "url": str(built.cache), "artifacts": 2, "bytes": sum(r["size"] for r in rows.values())}
    ]
    model = rows[built.model["key"]]
    assert model["target"] == "cli.targets.TinyModel"
    assert rows[built.function["key"]]["target"] == "cli.targets.scale_shift"
    assert model["size"] == built.path(model["key"]).stat().st_size
    assert model["torch_version"] == torch.__version__
    assert model["device"] == "cpu"
    assert {"created_at", "last_used"} <= set(model)
    table = cli("ls", "--cache", str(built.cache))
    assert table.rc == 0
    assert built.model["key"] in table.out
    assert built.function["key"] in table.out
    assert "2 artifacts" in table.out


def test_looking_is_not_using(built: Built, tmp_path: Path) -> None:
    """ls, inspect and verify must not move an artifact up the LRU order that gc evicts by."""
    cache = built.copy(tmp_path)
    key = built.model["key"]
    past = 1_000_000_000
    os.utime(built.path(key, cache), (past, past))
    for argv in (("ls",), ("inspect", key), ("verify", "--all"), ("explain", *MODEL)):
        assert cli(*argv, "--cache", str(cache), "--json").rc == 0, argv
    (entry,) = [e for e in LocalStore(cache).list() if e.key == key]
    assert entry.last_used == past


def test_inspect_by_key_and_by_path(built: Built) -> None:
    key = built.model["key"]
    by_key = cli("inspect", key, "--cache", str(built.cache), "--json")
    assert by_key.rc == 0, by_key.err
    report = by_key.json()
    header = report["header"]
    assert header["cache_key"]["key"] == key
    assert [s["name"] for s in report["sections"]] == ["payload", "kernels"]
    assert report["integrity"].startswith("ok")
    assert report["signed"] is False
    fates = report["guard_fates"]
    assert fates["kept"] > 0
    assert fates["unfated"] == 0
    assert sum(fates.values()) == len(header["guards"])
    assert all(g["fate"] in ("kept", "re-checked", "keyed") for g in header["guards"])
    assert {"fixes_applied", "inlined_sources", "fingerprint", "compile_seconds"} <= set(header)
    by_path = cli("inspect", str(built.path(key)), "--json")
    assert by_path.rc == 0
    assert by_path.json()["header"] == header
    text = cli("inspect", key, "--cache", str(built.cache))
    assert text.rc == 0
    for word in ("sections", "payload", "inlined sources", "guard fates", "re-checked", "cli.targets.TinyModel"):
        assert word in text.out, word


def test_inspect_unknown_key_is_a_usage_error(built: Built) -> None:
    result = cli("inspect", "nothing-here", "--cache", str(built.cache))
    assert result.rc == 2
    assert "neither a file nor a key" in result.err


def test_verify_all_ok(built: Built) -> None:
    result = cli("verify", "--cache", str(built.cache), "--json")
    assert result.rc == 0, result.out
    report = result.json()
    assert report["signature_checked"] is False
    assert sorted(r["status"] for r in report["results"]) == ["ok", "ok"]
    assert cli("verify", built.function["key"], "--cache", str(built.cache)).rc == 0


def test_verify_accepts_a_variant_stored_under_its_own_digest(built: Built, tmp_path: Path) -> None:
    cache = built.copy(tmp_path)
    key = built.model["key"]
    data = built.path(key, cache).read_bytes()
    variant = f"{key}.{hashlib.sha256(data).hexdigest()[:16]}"
    built.path(variant, cache).write_bytes(data)
    built.path(f"{key}.{'0' * 16}", cache).write_bytes(data)  # a variant name that is not this artifact's digest
    report = cli("verify", "--cache", str(cache), "--json").json()
    status = {Path(r["artifact"]).name.removesuffix(".tkln").split(" ")[-1]: r["status"] for r in report["results"]}
    assert status[variant] == "ok"
    assert status[f"{key}.{'0' * 16}"] == "mismatch"


def test_verify_finds_a_flipped_byte_a_moved_file_and_a_missing_key(built: Built, tmp_path: Path) -> None:
    cache = built.copy(tmp_path)
    target = built.path(built.model["key"], cache)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    moved = f"renamed-{'0' * 64}"
    shutil.copyfile(built.path(built.function["key"], cache), built.path(moved, cache))
    result = cli("verify", "--all", "--cache", str(cache), "--json")
    assert result.rc == 1
    status = {r["artifact"]: r for r in result.json()["results"]}
    assert status[built.model["key"]]["status"] == "corrupt"
    assert "sha256" in status[built.model["key"]]["reason"]
    assert status[moved]["status"] == "mismatch"
    assert status[built.function["key"]]["status"] == "ok"
    text = cli("verify", "--cache", str(cache))
    assert text.rc == 1
    assert "corrupt" in text.out
    assert "2 failed" in text.out
    assert cli("verify", built.function["key"], "--cache", str(cache)).rc == 0
    missing = cli("verify", "absent-key", "--cache", str(cache), "--json")
    assert missing.rc == 1
    assert missing.json()["results"][0]["status"] == "missing"
    assert cli("verify", "--all", built.function["key"], "--cache", str(cache)).rc == 2


def test_verify_with_a_signing_key_refuses_unsigned(built: Built, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHKILN_SIGNING_KEY", "fleet-secret")
    result = cli("verify", "--cache", str(built.cache), "--json")
    assert result.rc == 1
    report = result.json()
    assert report["signature_checked"] is True
    assert {r["status"] for r in report["results"]} == {"untrusted"}


def test_explain_builds_the_key_compile_built(built: Built) -> None:
    """explain's key must equal torchkiln.compile's for the same request, or it would explain the wrong miss."""
    for argv, record in ((MODEL, built.model), (FUNCTION, built.function)):
        result = cli("explain", *argv, "--cache", str(built.cache), "--json")
        assert result.rc == 0, result.err
        report = result.json()
        assert report["wanted"] == record["key"]
        assert report["hit"] is True
        assert report["differences"] == []
    text = cli("explain", *MODEL, "--cache", str(built.cache))
    assert "this key is stored" in text.out
    assert "next call: a hit on " + built.model["key"] in text.out


def test_explain_names_the_part_that_differs(built: Built) -> None:
    argv = ["cli.targets:build_tiny", "--inputs", "cli.targets:tiny_inputs_wider_batch"]
    result = cli("explain", *argv, "--cache", str(built.cache), "--json")
    assert result.rc == 0, result.err
    report = result.json()
    assert report["hit"] is False
    assert report["nearest"] == built.model["key"]
    assert [d["part"] for d in report["differences"]] == ["inputs"]
    assert any("[2,8] -> [3,8]" in change for change in report["differences"][0]["changes"])
    text = cli("explain", *argv, "--cache", str(built.cache))
    assert "part 'inputs' differs" in text.out
    # An (args, kwargs) SPEC is accepted; passing x by name is another request than passing it by position.
    kwargs = cli("explain", "cli.targets:build_tiny", "--inputs", "cli.targets:tiny_inputs_as_kwargs",
                 "--cache", str(built.cache), "--json")  # fmt: skip
    assert kwargs.rc == 0, kwargs.err
    assert kwargs.json()["nearest"] == built.model["key"]
    assert kwargs.json()["hit"] is False


def test_explain_keys_the_mode_as_compile_does(built: Built) -> None:
    # the default mode adds nothing to the key (keys of earlier releases); another mode is an 'options' difference
    default = cli("explain", *MODEL, "--mode", "default", "--cache", str(built.cache), "--json")
    assert default.rc == 0, default.err
    assert default.json()["wanted"] == built.model["key"]
    autotune = cli("explain", *MODEL, "--mode", "max-autotune", "--cache", str(built.cache), "--json")
    assert autotune.rc == 0, autotune.err
    report = autotune.json()
    assert report["hit"] is False and report["nearest"] == built.model["key"]
    assert [d["part"] for d in report["differences"]] == ["options"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exited:  # argparse's usage error
        main(["explain", *MODEL, "--mode", "fastest", "--cache", str(built.cache)])
    assert exited.value.code == 2 and "invalid choice: 'fastest'" in err.getvalue()


def test_gc_evicts_least_recently_used_first(built: Built, tmp_path: Path) -> None:
    cache = built.copy(tmp_path)
    old, new = built.model["key"], built.function["key"]
    os.utime(built.path(old, cache), (1_000_000_000, 1_000_000_000))
    keep = built.path(new, cache).stat().st_size
    result = cli("gc", "--max-size", str(keep), "--cache", str(cache), "--json")
    assert result.rc == 0, result.err
    report = result.json()
    (tier,) = report["tiers"]
    assert tier["tier"] == "local" and tier["evicted"] == [old]
    assert tier["bytes_after"] == keep
    assert report["max_size"] == keep
    text = cli("gc", "--max-size", "0K", "--cache", str(cache))
    assert text.rc == 0
    assert f"evicted local: {new}" in text.out
    assert LocalStore(cache).list() == []


def test_gc_bad_size_is_a_usage_error(tmp_path: Path) -> None:
    result = cli("gc", "--max-size", "lots", "--cache", str(tmp_path / "c"))
    assert result.rc == 2
    assert "bad size 'lots'" in result.err
    assert "500M" in result.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1 << 20), ("500M", 500 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("10kb", 10240), ("0", 0)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "5X", "M", "1e9", "2 GB extra"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="bad size"):
        parse_size(text)


def test_rm(built: Built, tmp_path: Path) -> None:
    cache = built.copy(tmp_path)
    key = built.model["key"]
    result = cli("rm", key, "--cache", str(cache), "--json")
    assert result.rc == 0
    assert result.json() == {"results": [{"tier": "local", "key": key, "deleted": True}], "missing": []}
    again = cli("rm", key, "--cache", str(cache))
    assert again.rc == 1
    assert f"missing {key}" in again.out
    for argv, message in (
        (["--all"], "add --yes"),
        ([], "give one or more KEYs"),
        ([key, "--all", "--yes"], "give one or more KEYs"),
        (["../escape"], "invalid cache key"),
    ):
        bad = cli("rm", *argv, "--cache", str(cache))
        assert bad.rc == 2, argv
        assert message in bad.err, (argv, bad.err)
    assert cli("rm", "--all", "--yes", "--cache", str(cache)).rc == 0
    assert LocalStore(cache).list() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nocolon", "--inputs", "cli.targets:tiny_inputs"], "is not of the form pkg.module:factory"),
        (["cli.nope:x", "--inputs", "cli.targets:tiny_inputs"], "cannot import 'cli.nope'"),
        (["cli.targets:nope", "--inputs", "cli.targets:tiny_inputs"], "has no attribute 'nope'"),
        (["cli.targets:NOT_CALLABLE", "--inputs", "cli.targets:tiny_inputs"], "expected pkg.module:factory"),
        (
            ["cli.targets:returns_int", "--inputs", "cli.targets:tiny_inputs"],
            "type int, not an nn.Module",
        ),
        (["cli.targets:scale_shift", "--inputs", "cli.targets:fn_inputs"], "pass --function"),
        (["cli.targets:raises", "--inputs", "cli.targets:tiny_inputs"], "factory exploded"),
        (["cli.targets:TinyModel", "--function", "--inputs", "cli.targets:tiny_inputs"], "drop --function"),
        (["cli.targets:build_tiny", "--inputs", "cli.targets:returns_int"], "SPEC 'cli.targets:returns_int'"),
        (["cli.targets:build_tiny", "--inputs", "cli.targets:raises"], "calling SPEC cli.targets:raises()"),
        (["cli.targets:build_tiny", "--inputs", "tiny_inputs"], "is not of the form pkg.module:function"),
        (["cli.targets:lambda_fn", "--function", "--inputs", "cli.targets:fn_inputs"], "a lambda has no name"),
    ],
)
def test_bad_target_or_spec_is_a_usage_error(argv: list[str], message: str, tmp_path: Path) -> None:
    result = cli("compile", *argv, "--cache", str(tmp_path / "cache"))
    assert result.rc == 2, result.err
    assert message in result.err
    assert result.err.startswith("torchkiln compile: error: ")
    assert not (tmp_path / "cache").exists()  # nothing was compiled, nothing was created


# -- usage errors exit 2 (settings.py, issue 10) --------------------------------------------------------------------
def test_an_unknown_cache_scheme_is_a_usage_error() -> None:
    result = cli("ls", "--cache", "nosuch://bucket/prefix")
    assert result.rc == 2 and "unknown cache URL scheme 'nosuch'" in result.err


def test_a_bad_setting_is_a_usage_error_before_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHKILN_LOCK_TIMEOUT", "soon")
    result = cli("ls")
    assert result.rc == 2 and "TORCHKILN_LOCK_TIMEOUT='soon'" in result.err and result.out == ""


def test_a_local_cache_path_that_is_not_there_is_an_error(tmp_path: Path) -> None:
    # "0 artifacts", rc 0 hid a typo in --cache (issue 11); a file is not a cache either.
    for path in (tmp_path / "typo", tmp_path / "file"):
        if path.name == "file":
            path.write_text("x")
        for command in ("ls", "verify", "gc"):
            extra = ["--max-size", "1G"] if command == "gc" else []
            result = cli(command, "--cache", str(path), *extra)
            assert result.rc == 1, (command, path, result.out, result.err)
            assert "no cache at this path" in result.err or "not a directory" in result.err


def test_tier_option_on_a_local_cache(built: Built) -> None:
    assert cli("ls", "--cache", str(built.cache), "--tier", "local").rc == 0
    bad = cli("ls", "--cache", str(built.cache), "--tier", "remote")
    assert bad.rc == 2 and "has no remote tier" in bad.err


def test_a_prewarm_that_cannot_publish_fails_before_it_compiles(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # group/world-writable: torchkiln refuses to publish there
    result = cli("compile", *MODEL, "--cache", str(shared))
    assert result.rc == 1, result.err
    assert "group or others" in result.err or "not private" in result.err or "chmod" in result.err, result.err
    assert "compiling" not in result.err  # no compile started (progress announces every compile)
    assert not list(shared.rglob("*.tkln"))


def test_check_writable_refuses_a_full_disk(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "cache")
    store.check_writable()  # a fresh private directory is fine
    with pytest.raises(StoreError, match="MiB free"):
        store.check_writable(need_bytes=1 << 62)


def test_inspect_a_missing_file_says_so(tmp_path: Path) -> None:
    result = cli("inspect", "nothere.tkln", "--cache", str(tmp_path))
    assert result.rc == 2 and "no such artifact file: nothere.tkln does not exist" in result.err


def test_json_errors_are_one_object_on_stdout(tmp_path: Path) -> None:
    for argv, code in (
        (["inspect", "nothere.tkln", "--cache", str(tmp_path)], 2),
        (["ls", "--cache", str(tmp_path / "typo")], 1),
        (["ls", "--cache", "nosuch://x"], 2),
    ):
        result = cli(*argv, "--json")
        assert result.rc == code, argv
        report = result.json()
        assert report["ok"] is False and report["exit_code"] == code and report["command"] == argv[0]
        assert set(report["error"]) == {"type", "what", "where", "fix"} and report["error"]["what"]


def test_help_names_the_real_default_cache(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ls", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text and "TORCHKILN_CACHE" in text
