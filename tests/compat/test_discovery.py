"""The registry discovers its fixes from compat/fixes/ (src/torchkiln/compat/registry.py ``discover``).

Adding a fix is adding a file: every public module there is found, in a fixed order, and a module that cannot be
loaded is reported as ``broken`` instead of raising. The broken cases run on a throwaway package on ``sys.path``
(plain Python files written by the test); torch is not touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import torchkiln
from torchkiln import compat
from torchkiln.cli.doctor import fix_problems
from torchkiln.compat import registry
from torchkiln.compat.fix import DEFAULT_ORDER, Fix

FIXES_DIR = Path(registry.__file__).parent / "fixes"

#: A well-formed fix with no torch names: it is not applicable anywhere and never patches anything.
_GOOD = """
from packaging.specifiers import SpecifierSet
from torchkiln.compat.fix import Fix

FIX = Fix(
    id={fix_id!r},
    title="a test fix",
    upstream="none",
    affected=SpecifierSet(">=2.0.dev0"),
    fixed_in=None,
    touches=("torch.nothing",),
    targets_exist=lambda: False,
    probe=lambda: False,
    apply=lambda: None,
    revert=lambda: None,
    is_applied=lambda: False,
    {order}
)
"""


def test_every_fix_file_is_discovered_and_none_is_broken() -> None:
    files = sorted(p.stem for p in FIXES_DIR.glob("*.py") if not p.name.startswith("_"))
    assert len(files) >= 4
    found = registry.discover()
    assert sorted(f.id for f in found) == sorted(name.replace("_", "-") for name in files)
    assert not [f for f in found if isinstance(f, registry.BrokenFix)]
    assert found == compat.fixes()  # the table the rest of torchkiln uses is the discovered one


def test_discovery_keeps_the_application_order() -> None:
    # enable-aot-compile first; the two get_runtime_env post-processors in the order they run; the two guard-state
    # pickler hooks in the order they run; then the load-side ImportSource fix, the AOTCompilePickler one, the loaded
    # autotuners' paths and their cached coordinate-descent results, the CPU ISA check (their places change no
    # result).
    ids = [f.id for f in registry.discover()]
    assert ids == [
        "enable-aot-compile",
        "builtins-runtime-env",
        "module-globals",
        "guard-state-singletons",
        "self-pickling-local-modules",
        "import-source-reload",
        "wrapped-functions",
        "static-autotuner-paths",
        "coordesc-warm-cache",
        "isa-probe-without-import",
    ]
    orders = [(f.order, f.id) for f in registry.discover()]
    assert orders == sorted(orders) and len({o for o, _ in orders}) == len(orders)


@pytest.fixture
def fake_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """An empty fixes package with a fresh name (so no earlier import of it is cached), on sys.path."""
    name = f"tk_fake_fixes_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text('"""fixes for a test"""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, folder


def _write(folder: Path, module: str, text: str) -> None:
    (folder / f"{module}.py").write_text(text)


def test_order_then_id_decides_and_helpers_are_skipped(fake_fixes: tuple[str, Path]) -> None:
    name, folder = fake_fixes
    _write(folder, "a_late", _GOOD.format(fix_id="a-late", order="order=50,"))
    _write(folder, "b_early", _GOOD.format(fix_id="b-early", order="order=5,"))
    _write(folder, "c_default", _GOOD.format(fix_id="c-default", order=""))
    _write(folder, "_helper", "raise RuntimeError('a helper is not a fix and is never imported by discovery')\n")
    found = registry.discover(name)
    assert [f.id for f in found] == ["b-early", "a-late", "c-default"]
    assert found[-1].order == DEFAULT_ORDER


def test_a_broken_fix_is_reported_and_the_others_still_load(
    fake_fixes: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, folder = fake_fixes
    _write(folder, "good", _GOOD.format(fix_id="good", order="order=1,"))
    _write(folder, "missing_name", "from torchkiln_no_such_module import helper\n")
    _write(folder, "syntax_error", "def broken(:\n")
    _write(folder, "no_record", "FIX = 'not a Fix'\n")
    _write(folder, "twin", _GOOD.format(fix_id="good", order=""))  # repeats the id of good.py
    found = registry.discover(name)  # never raises
    by_id = {f.id: f for f in found}
    assert set(by_id) == {"good", "missing-name", "syntax-error", "no-record", "twin"}
    assert not isinstance(by_id["good"], registry.BrokenFix)
    assert isinstance(by_id["good"], Fix)

    monkeypatch.setattr(registry, "_all_fixes", lambda: found)
    statuses = {s.id: s for s in torchkiln.fixes()}
    assert statuses["good"].state is compat.FixState.NOT_APPLICABLE
    broken = {i: s for i, s in statuses.items() if s.state is compat.FixState.BROKEN}
    assert set(broken) == {"missing-name", "syntax-error", "no-record", "twin"}
    assert "ModuleNotFoundError" in broken["missing-name"].detail
    assert "torchkiln_no_such_module" in broken["missing-name"].detail
    assert "SyntaxError" in broken["syntax-error"].detail
    assert "no FIX" in broken["no-record"].detail
    assert "'good'" in broken["twin"].detail
    assert all(s.probe_failed and f"{name}." in s.title for s in broken.values())

    # Applying, scoping and doctor's verdict go on around them: nothing raises, nothing is applied.
    applied = {s.id: s.state for s in torchkiln.apply_fixes()}
    assert applied["syntax-error"] is compat.FixState.BROKEN
    assert torchkiln.apply_fixes(["missing-name"])[0].state is compat.FixState.BROKEN
    assert compat.applied_ids() == []
    with compat.compile_scope():
        pass
    problems = fix_problems(list(statuses.values()), list(statuses.values()))
    assert len(problems) == 4 and all("could not run" in p for p in problems)
    for status in broken.values():
        status.to_dict()  # doctor --json prints it
