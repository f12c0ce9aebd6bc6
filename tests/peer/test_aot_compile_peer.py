"""PyTorch main's test/dynamo/test_aot_compile.py, through torchkiln, saved in one process and loaded in another.

Each case of peer_cases.CASES is compiled by ``torchkiln.compile`` in a fresh process (peer_roundtrip.py ``save``)
and asked for again in a second fresh process with ``strict=True`` (``load``): it passes only if the second process
ran the artifact of the first and every call matched eager. The soundness cases (``load_make``) load the same code
with another closure, non-strict, and pass only on a correct result. Upstream runs its tests in one process; the
pass count here is measured across two.

The cases whose tests are selected run in two processes per lane (one save, one load): the default lane's cases
(60 s measured on 2 cores) and the slow ones (``-m slow``). Cases that prove a forward fix or the nested-function
rule are also marked ``compat``, so ``make test-compat`` runs them on torch 2.11.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.specifiers import SpecifierSet

from peer import peer_cases as cases
from torchkiln.compat.versions import in_range

HELPER = Path(__file__).with_name("peer_roundtrip.py")
TESTS = Path(__file__).resolve().parent.parent

#: Cases that prove a forward fix (compat/fixes) or the nested-function rule (targets.py): the compat lane too.
COMPAT_CASES = frozenset(
    {
        "decorated_wraps",  # wrapped-functions
        "dynamic_cond",  # import-source-reload (2.13); the 2.11 limit below
        "dynamic_cond_no_grad",  # import-source-reload on 2.11
        "vmap_grad",  # import-source-reload
        "decorated",
        "closure",
        "closure_other_int",
        "closure_other_tensor",
        "closure_other_function",
    }
)


@dataclass(frozen=True)
class Limit:
    """Where a case cannot pass, the error it fails with, and why (docs/PEER.md has the details)."""

    torch: SpecifierSet
    error: str
    why: str


LIMITS: dict[str, Limit] = {
    "regional_inductor": Limit(
        SpecifierSet(">=2.10.dev0"),
        "backend must be a registered backend name",
        "torchkiln refuses callable backends: a callable cannot be named in a cache key",
    ),
    "aot_eager_backend": Limit(
        SpecifierSet("<2.12.dev0"),
        "expected OutputCode",
        "torch 2.11's aot_compile cannot save aot_eager output (2.13 can)",
    ),
    "dynamic_cond": Limit(
        SpecifierSet("<2.13.dev0"),  # 2.11 measured, 2.12 not checked
        "Unsupported inductor graph input type",
        "torch 2.11 Inductor cannot lower the backward graph, which takes the SymBool predicate as an input; "
        "aot_compile forces the backward lowering (plain torch.compile fails the same way at .backward())",
    ),
}


@dataclass
class Batch:
    header: dict[str, Any]
    save: dict[str, dict[str, Any]]
    load: dict[str, dict[str, Any]]

    def outcome(self, name: str) -> tuple[bool, str]:
        save, load = self.save[name], self.load[name]
        if not save["ok"]:
            return False, f"save: {save['error']}"
        return bool(load["ok"]), "" if load["ok"] else f"load: {load['error']}"


def _run(phase: str, root: Path, names: list[str]) -> dict[str, Any]:
    env_root = root / f"env-{phase}"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": ":".join([str(HELPER.parent), str(TESTS), *sys.path]),
        "TORCHINDUCTOR_CACHE_DIR": str(env_root / "inductor"),
        "TRITON_CACHE_DIR": str(env_root / "triton"),
        "XDG_CACHE_HOME": str(env_root / "xdg"),
        "PYTHONWARNINGS": "ignore",
        "HOME": str(env_root),
    }
    proc = subprocess.run(
        [sys.executable, str(HELPER), phase, str(root / "cache"), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PEER ")]
    assert proc.returncode == 0 and lines, (
        f"{phase} exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    report: dict[str, Any] = json.loads(lines[-1].removeprefix("PEER "))
    return report


def _batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, *, slow: bool) -> Batch:
    # Only the cases whose tests were selected (-k, -m, a lane's markers): a lane pays for what it runs.
    selected = sorted(
        {
            item.callspec.params["name"]
            for item in request.session.items
            if item.path == Path(__file__) and hasattr(item, "callspec") and "name" in item.callspec.params
        }
    )
    names = [n for n in selected if cases.CASES[n].slow is slow]
    if not names:
        pytest.skip("no case of this batch selected")
    root = tmp_path_factory.mktemp("peer-slow" if slow else "peer")
    save, load = _run("save", root, names), _run("load", root, names)
    return Batch(save["header"], {c["case"]: c for c in save["cases"]}, {c["case"]: c for c in load["cases"]})


@pytest.fixture(scope="module")
def default_batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return _batch(request, tmp_path_factory, slow=False)


@pytest.fixture(scope="module")
def slow_batch(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Batch:
    return _batch(request, tmp_path_factory, slow=True)


def _param(name: str) -> Any:
    marks = [pytest.mark.slow] if cases.CASES[name].slow else []
    if name in COMPAT_CASES:
        marks.append(pytest.mark.compat)
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in cases.CASES])
def test_peer_case_round_trips(name: str, request: pytest.FixtureRequest) -> None:
    """The case runs from the artifact another process saved (or, where a limit applies, fails exactly so)."""
    batch: Batch = request.getfixturevalue("slow_batch" if cases.CASES[name].slow else "default_batch")
    ok, error = batch.outcome(name)
    limit = LIMITS.get(name)
    if limit is not None and in_range(limit.torch):
        assert not ok and limit.error in error, f"{name}: expected the known limit ({limit.why}), got: {error or 'ok'}"
        return
    assert ok, f"{name} ({cases.CASES[name].upstream}): {error}"
    if cases.CASES[name].load_make is None:
        assert batch.load[name]["hit"], f"{name}: the load was not a cache hit"


def test_every_ported_case_is_run() -> None:
    """The port keeps upstream's names: each case says which test it ports, and the limits name real cases."""
    assert set(LIMITS) <= set(cases.CASES)
    assert set(cases.CASES) >= COMPAT_CASES
    assert all(case.upstream for case in cases.CASES.values())


_RAW_CLOSURE = """
import sys, torch
from peer import peer_cases as cases
from torchkiln import compat
compat.apply_fixes()  # 2.11 needs enable-aot-compile; nothing here touches closures
phase, path, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
fn = cases.make_closure(torch.full((4,), value))
x, y = torch.zeros(3, 4), torch.zeros(3, 4)
if phase == "save":
    with compat.compile_scope():
        compiled = torch.compile(fn, fullgraph=True, backend="eager").aot_compile(((x, y), {}))
    compiled.save_compiled_function(path)
else:
    with open(path, "rb") as handle:
        loaded = torch.compiler.load_compiled_function(handle, f_globals=vars(cases))
    print("RAW", float(loaded(x, y)[0, 0]), float(fn(x, y)[0, 0]))
"""


@pytest.mark.slow
@pytest.mark.compat
def test_torchs_own_load_runs_the_closure_it_saved(tmp_path: Path) -> None:
    """Why compiler.load binds the caller's closure: torch's loaded function computes with the closure tensor of
    the process that saved it, whatever the caller's function holds (here 1.0 saved, 5.0 at load)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join([str(HELPER.parent), str(TESTS), *sys.path])}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor")
    path = str(tmp_path / "closure.bin")
    for phase, value in (("save", "1.0"), ("load", "5.0")):
        proc = subprocess.run(
            [sys.executable, "-c", _RAW_CLOSURE, phase, path, value],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, eager = (float(v) for v in proc.stdout.split("RAW ")[-1].split())
    assert (loaded, eager) == (1.0, 5.0)  # torch: the saved value; the default_batch's closure_other_tensor: 5.0
