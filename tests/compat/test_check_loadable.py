"""``compiler.check_loadable`` and the publish gate of ``Specializer._compile``: torch must load what it saved.

The unloadable artifact is real, not mocked: ``DtypeAttr`` (roundtrip_cases.py: a module holding an unread
``torch.float32``) compiled with the guard-state-singletons fix taken out of the registry's table (torch itself is
untouched), on a torch where that bug lives (its probe says so; elsewhere the tests skip). Without the gate such an
artifact was published and every later process warned and recompiled; with it, the compile reports torch's
reason once, publishes nothing and still runs compiled.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import torchkiln
from torchkiln import compat, compiler
from torchkiln.compat import registry
from torchkiln.errors import CompileError, TorchkilnWarning
from torchkiln.store import open_store

from .roundtrip_cases import DtypeAttr

pytestmark = pytest.mark.compat

SINGLETONS = "guard-state-singletons"


def _model_and_input() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return DtypeAttr().eval(), torch.randn(4, 8)


@pytest.fixture
def without_fix(monkeypatch: pytest.MonkeyPatch) -> Iterator[compat.Fix]:
    fix = compat.get_fix(SINGLETONS)
    fix.revert()
    if compat.status(SINGLETONS).state is not compat.FixState.NEEDED:
        pytest.skip(f"this torch does not show the bug ({compat.status(SINGLETONS).detail})")
    real = registry._all_fixes()
    monkeypatch.setattr(registry, "_all_fixes", lambda: tuple(f for f in real if f.id != SINGLETONS))
    yield fix
    fix.revert()


def test_check_loadable_reports_torchs_reason_and_none_when_it_loads(without_fix: compat.Fix) -> None:
    model, x = _model_and_input()
    broken = compiler.compile_target(model, (x,), {}, is_module=True, dynamic=False, backend="inductor", options=None)
    assert broken.payload is not None  # torch saved it without complaint
    reason = compiler.check_loadable(broken.payload, is_module=True, target=model)
    assert reason is not None and reason.startswith("TypeError: ") and "not _Missing" in reason, reason
    without_fix.apply()  # the fix by hand (the registry's table lacks it here)
    fixed = compiler.compile_target(model, (x,), {}, is_module=True, dynamic=False, backend="inductor", options=None)
    assert fixed.payload is not None
    assert compiler.check_loadable(fixed.payload, is_module=True, target=model) is None


def test_an_artifact_that_cannot_load_is_not_published(without_fix: compat.Fix, tmp_path: Path) -> None:
    model, x = _model_and_input()
    with pytest.warns(TorchkilnWarning) as caught:
        compiled = torchkiln.compile(model, (x,), cache=tmp_path)
        out = compiled(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, TorchkilnWarning)]
    assert len(messages) == 1, messages  # reported once, at compile
    assert "the artifact does not load" in messages[0] and "not _Missing" in messages[0], messages[0]
    assert "not published" in messages[0]
    assert open_store(str(tmp_path)).get(compiled.key) is None
    assert compiled.hit is False and compiled.artifact_bytes == 0
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # further calls fit the specialization: no new warning, no recompile
        compiled(x)
    assert [s.key for s in compiled.specializations] == [compiled.key]


def test_strict_raises_compile_error_with_torchs_reason(without_fix: compat.Fix, tmp_path: Path) -> None:
    model, x = _model_and_input()
    with pytest.raises(CompileError) as info:
        torchkiln.compile(model, (x,), cache=tmp_path, strict=True)
    assert "cannot load what it saved" in info.value.what and "not _Missing" in info.value.what
    assert open_store(str(tmp_path)).get(info.value.where or "") is None
