"""``torchkiln doctor``: the report's fields, its exit codes, and that it never shows the signing key.

The full command runs in a subprocess: doctor applies the needed fixes in its own process, and the test process
must stay unpatched for tests that show a bug without its fix. The decision rules (which fix states and which
signing-key settings are problems) are checked directly on constructed records.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version

from torchkiln.cli import main
from torchkiln.cli.doctor import cache_report, collect, fix_problems, signing_report
from torchkiln.compat import FixState, FixStatus, fixes

STATES = {state.value for state in FixState}
SECRET = "s3cret-doctor-value"


#: Runs doctor twice in one fresh process (the fix probes run once per process): --json without a signing
#: key, then the table with one. Outputs are written to files so neither run's output can mix with the other's.
_TWICE = """
import contextlib, io, os, sys
from torchkiln.cli import main
out, cache = sys.argv[1], sys.argv[2]
for name, env, args in (("json", {}, ["--json"]), ("table", {"TORCHKILN_SIGNING_KEY": sys.argv[3]}, [])):
    os.environ.update(env)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = main(["doctor", "--cache", cache, *args])
    with open(os.path.join(out, name), "w") as f:
        f.write(f"{rc}\\n{buffer.getvalue()}")
"""


@dataclasses.dataclass
class Runs:
    outputs: dict[str, tuple[int, str]]  # "json" / "table" -> (exit code, stdout)
    cache_created: bool


@pytest.fixture(scope="module")
def doctor_runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    tmp = tmp_path_factory.mktemp("doctor")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TORCHKILN_")}
    environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor")
    cmd = [sys.executable, "-c", _TWICE, str(tmp), str(tmp / "cache"), SECRET]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stderr
    outputs = {}
    for name in ("json", "table"):
        rc, _, out = (tmp / name).read_text().partition("\n")
        outputs[name] = (int(rc), out)
    return Runs(outputs, (tmp / "cache").exists())


def test_doctor_json(doctor_runs: Runs) -> None:
    rc, out = doctor_runs.outputs["json"]
    assert rc == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["git_version"] == torch.version.git_version
    assert report["torch"]["supported"] is True
    assert "triton" in report
    assert report["cuda"]["built_with"] == torch.version.cuda
    assert report["device"]["type"] in ("cpu", "cuda")
    assert report["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    cache = report["cache"]
    assert cache["url"].endswith("cache")
    assert cache["from"] == "--cache"
    assert cache["writable"] is True
    assert cache["usable"] is True
    assert not doctor_runs.cache_created  # doctor looks at the cache; it does not create it
    assert report["signing_key"] == {"configured": False, "source": None}
    assert [f["id"] for f in report["fixes"]] == [f.id for f in fixes()]
    for fix in report["fixes"]:
        assert fix["state"] in STATES - {"needed"}, fix
        assert fix["state_before_apply"] in STATES
        assert fix["upstream"]
        assert "fixed_in" in fix
        assert fix["detail"]


def test_doctor_table_never_shows_the_signing_key(doctor_runs: Runs) -> None:
    rc, out = doctor_runs.outputs["table"]
    assert rc == 0, out
    assert SECRET not in out
    assert "configured (TORCHKILN_SIGNING_KEY)" in out
    assert "forward fixes" in out
    for fix in fixes():
        assert fix.id in out
    assert out.rstrip().endswith("ok")


def test_doctor_exits_1_on_too_old_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # torchkiln's own version reader, not torch: on torch < 2.10 doctor must say so and skip the fix probes
    # (which is also why this can run in-process: nothing gets patched).
    monkeypatch.setattr("torchkiln.compat.versions.torch_version", lambda: Version("2.9.1"))
    monkeypatch.delenv("TORCHKILN_SIGNING_KEY", raising=False)
    monkeypatch.delenv("TORCHKILN_SIGNING_KEY_FILE", raising=False)
    assert main(["doctor", "--json", "--cache", str(tmp_path / "cache")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["torch"]["supported"] is False
    assert report["fixes"] == []
    assert any("too old" in p for p in report["problems"])


def _status(state: FixState, detail: str = "the probe reproduces the bug") -> FixStatus:
    failed = detail.startswith("probe could not run")
    return FixStatus("some-fix", "title", "pytorch#1", ">=2.10", None, ("torch.x",), state, detail, failed)


def test_fix_problems() -> None:
    needed, applied = _status(FixState.NEEDED), _status(FixState.APPLIED, "active in this process")
    assert fix_problems([needed], [applied]) == []
    assert fix_problems([_status(FixState.NOT_NEEDED)], [_status(FixState.NOT_NEEDED)]) == []
    (still,) = fix_problems([needed], [needed])
    assert "some-fix is needed but could not be applied" in still
    failed = _status(FixState.NEEDED, "probe could not run (RuntimeError: boom); assumed present")
    (probe,) = fix_problems([failed], [applied])
    assert "probe of fix some-fix could not run" in probe


@pytest.mark.parametrize(
    ("environ", "configured", "problem"),
    [
        ({}, False, None),
        ({"TORCHKILN_SIGNING_KEY": SECRET}, True, None),
        ({"TORCHKILN_SIGNING_KEY": ""}, False, "is set but empty"),
        ({"TORCHKILN_SIGNING_KEY": SECRET, "TORCHKILN_SIGNING_KEY_FILE": "/k"}, False, "both"),
    ],
)
def test_signing_report(environ: dict[str, str], configured: bool, problem: str | None) -> None:
    info, problems = signing_report(environ)
    assert info["configured"] is configured
    assert SECRET not in json.dumps(info) + "".join(problems)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1
        assert problem in problems[0]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_cache_report_fails_on_a_cache_others_can_write(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    (root / "v1").mkdir(parents=True)
    root.chmod(0o777)
    info, problems = cache_report(str(root))
    assert info["usable"] is False
    assert "writable by other users" in info["error"]
    assert len(problems) == 1
    report = collect(str(root))
    assert report["ok"] is False
    assert any("writable by other users" in p for p in report["problems"])
    root.chmod(stat.S_IRWXU)
    info, problems = cache_report(str(root))
    assert (info["usable"], info["trusted"], info["writable"], problems) == (True, True, True, [])


def test_settings_report_names_a_bad_variable_and_hides_the_key() -> None:
    from torchkiln.cli.doctor import settings_report

    info, problems = settings_report({"TORCHKILN_LOCK_TIMEOUT": "10 minutes", "TORCHKILN_SIGNING_KEY": SECRET})
    assert info["set"]["TORCHKILN_LOCK_TIMEOUT"] == "10 minutes" and SECRET not in json.dumps(info)
    assert len(problems) == 1 and "TORCHKILN_LOCK_TIMEOUT" in problems[0]
    assert settings_report({}) == ({"set": {}}, [])
