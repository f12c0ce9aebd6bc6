"""Fix ``isa-probe-without-import``: Inductor's CPU ISA check no longer imports torch in each of its child processes.

The answer must not change: fresh processes with and without the fix pick the same ISAs (on a torch where the
bug lives, the compat lane's 2.11; on 2.13 the fix is not needed and both sides run torch's own script). The child
script the fix installs is run as torch runs it (the command recorded from torch's own ``check_build``), and
shown to load the test library without importing torch, and to fall back to torch's way when the light path
cannot load it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.procs import run_script
from torchkiln import compat
from torchkiln.compat.fixes.isa_probe_without_import import light_loader_script

FIX_ID = "isa-probe-without-import"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the light path is Linux's")


def test_the_script_preloads_only_the_torch_libraries_that_exist(tmp_path: Path) -> None:
    (tmp_path / "libtorch_cpu.so").write_bytes(b"")
    script = light_loader_script(tmp_path)
    assert repr([str(tmp_path / "libtorch_cpu.so")]) in script
    assert "libc10.so" not in script
    assert script.count("__lib_path__") == 2  # torch's check_build fills in the test library, for both paths


_CHILD = """
import json, sys, time
import torch
from torch._inductor import cpu_vec_isa
if sys.argv[1] == "1":
    from torchkiln import compat
    compat.apply_fixes(["isa-probe-without-import"])
start = time.perf_counter()
isas = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
picked = cpu_vec_isa.pick_vec_isa()
print(json.dumps({"isas": isas, "picked": str(picked), "seconds": time.perf_counter() - start,
                  "applied": compat.applied_ids() if sys.argv[1] == "1" else []}))
"""


def _pick_isa(tmp_path: Path, fixed: bool) -> dict[str, Any]:
    """A fresh process (sharing one Inductor cache under ``tmp_path``) picks the ISAs, with or without the fix."""
    proc = run_script(["-c", _CHILD, "1" if fixed else "0"], tmp_path / "scratch", pythonpath=[REPO / "src"])
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return record


@pytest.mark.compat
def test_fresh_processes_pick_the_same_isas_with_and_without_the_fix(tmp_path: Path) -> None:
    plain = _pick_isa(tmp_path, fixed=False)  # also builds the test libraries, so both sides time the loads only
    fixed = _pick_isa(tmp_path, fixed=True)
    assert fixed["isas"] == plain["isas"] and fixed["picked"] == plain["picked"]
    needed = compat.status(FIX_ID).state in (compat.FixState.NEEDED, compat.FixState.APPLIED)
    assert (FIX_ID in fixed["applied"]) == needed
    print(json.dumps({"without_fix_s": plain["seconds"], "with_fix_s": fixed["seconds"], "isas": plain["isas"]}))


@pytest.fixture
def recorded_children(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[list[str]]]:
    """The fix applied, a fresh Inductor cache, and every child command torch's check_build runs (unchanged)."""
    from torch._inductor import cpu_vec_isa

    fix = compat.get_fix(FIX_ID)
    if not fix.targets_exist():
        pytest.skip("this torch has no VecISA child script")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    fix.revert()
    fix.apply()  # applied even where torch does not need it: the script is what is under test
    commands: list[list[str]] = []
    real = cpu_vec_isa.subprocess
    check_call, run = real.check_call, real.run

    class Recording:  # cpu_vec_isa's view of the subprocess module: the same calls, noted
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def check_call(self, cmd: list[str], *args: Any, **kwargs: Any) -> Any:
            commands.append(list(cmd))
            return check_call(cmd, *args, **kwargs)

        def run(self, cmd: list[str], *args: Any, **kwargs: Any) -> Any:
            commands.append(list(cmd))
            return run(cmd, *args, **kwargs)

    monkeypatch.setattr(cpu_vec_isa, "subprocess", Recording())
    try:
        yield commands
    finally:
        fix.revert()


def _torch_imported_by(command: list[str], script: str) -> bool:
    """Run torch's child command with ``script`` (it must load its library: exit 0); did it import torch?"""
    proc = subprocess.run(
        [*command[:-1], script + "\nimport sys\nprint('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip() == "True"


def test_the_child_loads_the_test_library_without_importing_torch(recorded_children: list[list[str]]) -> None:
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.VecAVX2()
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("no AVX2 on this host: nothing to load")
    assert isa.check_build(cpu_vec_isa.VecISA._avx_code)
    (command,) = recorded_children
    assert _torch_imported_by(command, command[-1]) is False  # the same child, then: was torch imported?


def test_a_library_the_light_path_cannot_load_falls_back_to_importing_torch(
    recorded_children: list[list[str]], tmp_path: Path
) -> None:
    from torch._inductor import cpu_vec_isa

    isa = cpu_vec_isa.VecAVX2()
    if "avx2" not in Path("/proc/cpuinfo").read_text():
        pytest.skip("no AVX2 on this host: nothing to load")
    assert isa.check_build(cpu_vec_isa.VecISA._avx_code)
    (command,) = recorded_children
    # the same script with nothing preloaded: the test library's libtorch_cpu.so dependency cannot resolve cold
    script = command[-1]
    library = script.split('ctypes.CDLL("', 1)[1].split('"', 1)[0]
    bare = light_loader_script(tmp_path).replace("__lib_path__", library)
    assert _torch_imported_by(command, bare) is True  # loaded, torch's way
