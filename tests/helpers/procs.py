"""Run ``child.py`` (or another script) in a fresh process with private, initially empty compiler caches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
CHILD = HELPERS / "child.py"


def child_env(scratch: Path, extra: Mapping[str, str] | None = None, pythonpath: Sequence[Path] = ()) -> dict[str, str]:
    """The environment of a fresh process: its own empty Inductor/Triton caches under ``scratch``, no inherited
    torchkiln, Inductor or Triton settings, ``tests/`` (for ``helpers``) and ``pythonpath`` importable."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TORCHKILN_", "TORCHINDUCTOR_", "TRITON_", "PYTEST_"))
    }
    scratch.mkdir(parents=True, exist_ok=True)
    env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor")
    env["TRITON_CACHE_DIR"] = str(scratch / "triton")
    env["XDG_CACHE_HOME"] = str(scratch / "xdg")
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(TESTS), *sys.path])
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning,ignore::FutureWarning"
    env.update(extra or {})
    return env


def parse_result(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("TKRESULT ")]
    assert lines, f"no TKRESULT line in child output:\n{stdout[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("TKRESULT "))
    return result


def run_script(
    argv: Sequence[str],
    scratch: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path] = (),
    timeout: float = 900,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *argv],
        env=child_env(scratch, extra_env, pythonpath),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"
    )
    return proc


def run_child(
    config: Mapping[str, Any],
    scratch: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    pythonpath: Sequence[Path] = (),
    timeout: float = 900,
) -> dict[str, Any]:
    """Run ``child.py`` with ``config`` in a fresh process whose compiler caches live (empty) under ``scratch``."""
    proc = run_script(
        [str(CHILD), json.dumps(dict(config))], scratch, extra_env=extra_env, pythonpath=pythonpath, timeout=timeout
    )
    result = parse_result(proc.stdout)
    result["stderr"] = proc.stderr
    return result
